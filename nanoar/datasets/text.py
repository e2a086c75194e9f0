"""Character-level text: tiny Shakespeare, a character vocabulary, splits and windows."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from .download import DataError, default_data_dir, download, sha256_file

__all__ = [
    "TINY_SHAKESPEARE_URL",
    "TINY_SHAKESPEARE_SHA256",
    "load_text",
    "CharVocab",
    "split_text",
    "get_windows",
]

# char-rnn's tiny Shakespeare, 1,115,394 bytes of ASCII, 65 distinct characters.
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"
TINY_SHAKESPEARE_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"

# Local copies tried (relative to the working directory) before the cache and
# a download; used only if their checksum matches, so a stray input.txt that
# is something else is ignored.
_TEXT_LOCAL_COPIES = ["data/tinyshakespeare/input.txt", "tinyshakespeare.txt", "input.txt"]


def load_text(path: str | None = None, data_dir: str | None = None, *, mirrors: Sequence[str] | None = None) -> str:
    """Load a text corpus as a str.

    Args:
        path: a UTF-8 text file to read as is.  If None, tiny Shakespeare:
            a verified local copy (see ``_TEXT_LOCAL_COPIES``), else the cached
            ``<data_dir>/tinyshakespeare/input.txt``, else a download to it.
        data_dir: cache root, default ``default_data_dir()``.
        mirrors: full URLs to download tiny Shakespeare from, instead of
            ``TINY_SHAKESPEARE_URL``.
    """
    if path is None:
        for candidate in _TEXT_LOCAL_COPIES:
            if os.path.isfile(candidate) and sha256_file(candidate) == TINY_SHAKESPEARE_SHA256:
                path = candidate
                break
        else:
            dest = os.path.join(data_dir or default_data_dir(), "tinyshakespeare", "input.txt")
            path = download(list(mirrors) if mirrors else [TINY_SHAKESPEARE_URL], dest, TINY_SHAKESPEARE_SHA256)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e})") from None


class CharVocab:
    """Character-level vocabulary: id i <-> the i-th character in sorted order.

    Build it from the TRAINING text only (``CharVocab.from_text(train)``), so
    that nothing about the held-out text leaks into the model; encoding text
    with a character it has not seen is then an error, not a silent new id.
    """

    def __init__(self, chars: Sequence[str] | str):
        chars = sorted(set(chars))
        if any(len(c) != 1 for c in chars):
            raise ValueError("CharVocab takes single characters")
        if not chars:
            raise ValueError("CharVocab needs at least one character")
        self.chars: list[str] = chars
        # Sorted code points, for vectorised encode (searchsorted) and decode.
        self._codes = np.array([ord(c) for c in chars], dtype=np.uint32)

    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        return cls(set(text))

    def __len__(self) -> int:
        return len(self.chars)

    @property
    def size(self) -> int:
        return len(self.chars)

    def __eq__(self, other) -> bool:
        return isinstance(other, CharVocab) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"CharVocab({''.join(self.chars)!r})"

    def encode(self, text: str) -> np.ndarray:
        """str of length T -> (T,) int64 ids.

        Raises:
            ValueError: listing every character of ``text`` not in the vocabulary.
        """
        # UTF-32 gives one uint32 code point per character: a vectorised ord().
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, codes)
        ids_clipped = np.minimum(ids, len(self._codes) - 1)
        known = self._codes[ids_clipped] == codes
        if not known.all():
            unknown = [chr(c) for c in np.unique(codes[~known])]
            raise ValueError(
                f"{len(unknown)} character(s) not in the vocabulary: "
                + ", ".join(repr(c) for c in unknown)
            )
        return ids.astype(np.int64)

    def decode(self, ids) -> str:
        """Sequence or array of ids (any integer dtype, 1-D) -> str."""
        ids = np.asarray(ids)
        if ids.size == 0:
            return ""
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"decode expects a 1-D integer sequence, got shape {ids.shape} {ids.dtype}")
        if ids.min() < 0 or ids.max() >= len(self.chars):
            raise ValueError(f"ids must be in [0, {len(self.chars)}), got range [{ids.min()}, {ids.max()}]")
        return self._codes[ids].astype("<u4").tobytes().decode("utf-32-le")

    def to_dict(self) -> dict:
        """JSON-able description, for checkpoints' meta."""
        return {"type": "char", "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, d: dict) -> "CharVocab":
        if d.get("type") != "char" or not isinstance(d.get("chars"), str):
            raise ValueError(f"not a CharVocab dict: {d!r}")
        vocab = cls(d["chars"])
        if "".join(vocab.chars) != d["chars"]:
            raise ValueError("CharVocab dict's chars are not sorted and unique")
        return vocab


def split_text(text: str, train_fraction: float = 0.9) -> tuple[str, str]:
    """First ``train_fraction`` of the characters for training, the rest held out.

    A contiguous split (as nanoGPT does): random windows of a shuffled text
    would leak neighbouring context into the held-out part.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = int(len(text) * train_fraction)
    return text[:n], text[n:]


def get_windows(data_ids: np.ndarray, batch_size: int, context: int, rng: np.random.Generator) -> np.ndarray:
    """``batch_size`` random windows of ``context + 1`` consecutive ids.

    Models that score a sequence exactly (log p(w[1:] | w[0]) and so on) take
    the whole window; ``w[:, :-1]`` and ``w[:, 1:]`` are nanoGPT's inputs and
    next-token targets.

    Args:
        data_ids: (T,) int ids of the text, T >= context + 1.
        rng: draws the start offsets, uniform over the T - context valid ones.

    Returns:
        (B, context + 1) int64.
    """
    data_ids = np.asarray(data_ids)
    if data_ids.ndim != 1:
        raise ValueError(f"data_ids must be 1-D, got shape {data_ids.shape}")
    n_starts = len(data_ids) - context
    if context < 1 or n_starts < 1:
        raise ValueError(f"need at least context + 1 = {context + 1} ids, got {len(data_ids)}")
    starts = rng.integers(0, n_starts, size=batch_size)
    return data_ids[starts[:, None] + np.arange(context + 1)].astype(np.int64)
