"""Files on disk: the data error, the cache folder, checksums, atomic writes, downloads.

``download`` fetches a file from a list of mirrors into the cache with pooch
(https://www.fatiando.org/pooch), which streams it into a temporary file beside
the destination, checks its SHA-256 and only then moves it into place.  pooch is
an optional dependency, imported inside ``download`` when a file has to come
from the network; everything that reads local files works without it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import tempfile
from typing import BinaryIO, Iterator, Sequence

__all__ = [
    "DataError",
    "default_data_dir",
    "sha256_file",
    "atomic_write",
    "log_progress",
    "download",
]


class DataError(ValueError):
    """A data file is missing, corrupt, of the wrong format, or could not be downloaded.

    The message always names the file (its path, or the URL for a download).
    """


def default_data_dir() -> str:
    """Where downloaded datasets are cached.

    ``$NANOAR_DATA`` if set, else ``$XDG_CACHE_HOME/nanoar``, else
    ``~/.cache/nanoar``.  The folder is created on first download, not here.
    """
    if os.environ.get("NANOAR_DATA"):
        return os.environ["NANOAR_DATA"]
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache, "nanoar")


def sha256_file(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks (files may be large)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Write a file all at once or not at all: ``with atomic_write(path) as f: f.write(...)``.

    ``f`` is a binary file opened under a temporary name in ``path``'s folder
    (which must exist).  When the block ends normally the file is flushed,
    fsynced and renamed over ``path`` with ``os.replace``, and the folder is
    fsynced so that the rename itself is durable.  If the block raises, the
    temporary file is removed and ``path`` is untouched.  A crash or a full
    disk mid-write therefore leaves the previous file intact (plus, at worst,
    a stray hidden ``.tmp`` file).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            # mkstemp makes the file private (0600); give it the permissions a
            # plain open() would have, as the file it replaces probably had.
            os.chmod(tmp, 0o666 & ~_current_umask())
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(folder)


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _fsync_dir(folder: str) -> None:
    """Make a rename in ``folder`` durable (POSIX); a no-op where unsupported."""
    try:
        dfd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def log_progress(msg: str) -> None:
    """One progress line on stderr, so that it never mixes with a program's output."""
    print(f"nanoar: {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Hide a logger's INFO lines for the duration of the block."""
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def download(
    urls: str | Sequence[str],
    dest_path: str | os.PathLike,
    sha256: str | None,
    *,
    timeout: float = 30.0,
) -> str:
    """Make sure ``dest_path`` holds the file with checksum ``sha256``; return the path.

    * If ``dest_path`` exists and its SHA-256 matches (or ``sha256`` is None),
      it is used as is: no network, and pooch is not needed.
    * Otherwise each URL in ``urls`` is tried in turn with ``pooch.retrieve``,
      which streams the body into a temporary file in the same folder and moves
      it to ``dest_path`` only once its checksum matches; so a file at
      ``dest_path`` is always complete.
    * A cached file whose checksum does not match (a corrupt or old copy) is
      reported on stderr and never deleted: it stays where it is until a
      verified copy has been downloaded, is then moved aside to
      ``dest_path + ".bad"`` (replacing an older ``.bad``), and only then is
      the verified copy moved in.  Offline, it is not lost.
    * A mirror that fails (network error, HTTP error, truncated body, wrong
      checksum) is skipped and the next one tried; nothing of it is kept.
    * If every mirror fails, a DataError lists each failure -- a checksum
      mismatch names the expected and actual hash -- says exactly where to
      put the file by hand for offline use, and where the bad cached copy
      (if any) was kept.

    Args:
        urls: one URL or a list of mirrors' URLs for the same file.
        dest_path: final location of the file.
        sha256: expected hex SHA-256, or None to skip verification (only for
            files whose format the caller checks strictly itself).
        timeout: seconds for connecting and for each read.
    """
    urls = [urls] if isinstance(urls, str) else list(urls)
    dest_path = os.path.abspath(os.fspath(dest_path))
    name = os.path.basename(dest_path)
    expected = sha256.lower() if sha256 else None

    stale = None  # sha256 of a cached copy that does not match, left in place
    bad_path = dest_path + ".bad"
    if os.path.exists(dest_path):
        if expected is None:
            return dest_path
        stale = sha256_file(dest_path)
        if stale == expected:
            return dest_path
        log_progress(
            f"cached file {dest_path} is corrupt or out of date "
            f"(sha256 {stale}, expected {expected}); downloading it again "
            f"(it stays in place until a verified copy replaces it, then it is kept as {bad_path})"
        )

    try:
        import pooch
    except ImportError:
        problem = "has the wrong checksum (it was left in place)" if stale is not None else "not found"
        raise DataError(
            f"{dest_path}: {problem}, and downloading needs pooch: `pip install pooch` "
            "(or `pip install -e '.[scripts]'`); or put the file there by hand"
            + (f" (sha256 {expected})" if expected else "")
        ) from None

    # pooch streams the body into a temporary file and moves it to `incoming`
    # once its checksum matches; `incoming` then replaces dest_path.  (A
    # verified `incoming` left by an interrupted run is checked and used.)
    incoming = dest_path + ".download"
    # Accept-Encoding: identity asks for the file's bytes as stored, so that
    # the checksum is computed over exactly what the mirror serves.
    downloader = pooch.HTTPDownloader(
        progressbar=False, chunk_size=1 << 16, timeout=timeout, headers={"Accept-Encoding": "identity"}
    )
    failures = []
    # nanoar's own progress lines below replace pooch's INFO messages.
    with _quiet(pooch.get_logger()):
        for url in urls:
            log_progress(f"downloading {url} -> {dest_path}")
            try:
                pooch.retrieve(
                    url,
                    known_hash=f"sha256:{expected}" if expected else None,
                    fname=os.path.basename(incoming),
                    path=os.path.dirname(dest_path),
                    downloader=downloader,
                    progressbar=False,
                )
            except (OSError, ValueError) as e:
                # OSError: requests' errors (connection refused or reset,
                # timeouts, HTTP errors, a body shorter than its
                # Content-Length). ValueError: pooch's checksum mismatch, a
                # malformed URL.
                failures.append(f"{url}: {type(e).__name__}: {e}")
                log_progress(f"  failed: {type(e).__name__}: {e}")
                continue
            _move_in(incoming, dest_path, bad_path if os.path.exists(dest_path) else None)
            log_progress(f"  done, {os.path.getsize(dest_path)} bytes")
            return dest_path

    lines = [f"could not download {name}:"]
    lines += ["  " + f for f in failures] or ["  (no URLs given)"]
    lines += ["To use it offline, get the file yourself and put it at exactly", "  " + dest_path]
    if expected:
        lines.append(f"(its sha256 must be {expected})")
    if stale is not None and os.path.exists(dest_path):
        lines.append(
            f"The bad copy there (sha256 {stale}) was left in place, unchanged, at {dest_path}; replace it."
        )
    raise DataError("\n".join(lines))


def _move_in(incoming: str, dest_path: str, bad_path: str | None) -> None:
    """Put the verified file ``incoming`` at ``dest_path``; first, when ``bad_path`` is
    given, move the copy at ``dest_path`` there (replacing an older one), so that it is
    kept, never deleted."""
    if bad_path is not None:
        try:
            os.replace(dest_path, bad_path)
        except OSError as e:
            raise DataError(
                f"{dest_path}: could not move the bad cached copy aside to {bad_path} ({e}); "
                f"the verified download is at {incoming}: move it to {dest_path} by hand"
            ) from None
        log_progress(f"  the bad copy is kept as {bad_path}")
    os.replace(incoming, dest_path)
    _fsync_dir(os.path.dirname(dest_path))
