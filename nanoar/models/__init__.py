"""One file per model family; every model follows the protocol in `base.py`."""
