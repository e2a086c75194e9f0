"""Tests for nanoar.datasets.download.  No network: downloads come from 127.0.0.1."""

from __future__ import annotations

import os
import stat
import subprocess
import sys

import pytest

from datasets_fixtures import clear_proxies, dead_url, no_pooch, server, sha  # noqa: F401 (fixtures)
from nanoar.datasets import DataError, default_data_dir, download
from nanoar.datasets.download import atomic_write

# ---------------------------------------------------------------------------
# download
# ---------------------------------------------------------------------------


def test_download_good(server, tmp_path, capsys):
    body = os.urandom(200_000)
    url = server.add("/good.bin", body)
    dest = tmp_path / "sub" / "good.bin"
    out = download([url], dest, sha(body), timeout=5)
    assert out == str(dest)
    assert dest.read_bytes() == body
    assert os.listdir(dest.parent) == ["good.bin"]  # no temporary file left behind
    assert "downloading" in capsys.readouterr().err
    # Second call: verified cache, no request.
    n = len(server.hits)
    download([url], dest, sha(body), timeout=5)
    assert len(server.hits) == n


def test_download_single_url_string(server, tmp_path):
    body = b"hello"
    url = server.add("/s.txt", body)
    assert open(download(url, tmp_path / "s.txt", sha(body), timeout=5), "rb").read() == body


def test_download_without_checksum(server, tmp_path):
    body = b"format checked by the caller"
    url = server.add("/nosum.txt", body)
    dest = tmp_path / "nosum.txt"
    assert download([url], dest, None, timeout=5) == str(dest)
    assert dest.read_bytes() == body
    n = len(server.hits)
    download([url], dest, None, timeout=5)  # an existing file is used as is
    assert len(server.hits) == n


def test_download_bad_checksum(server, tmp_path):
    body = b"not what you expected" * 100
    url = server.add("/bad.bin", body)
    dest = tmp_path / "bad.bin"
    wanted = "0" * 64
    with pytest.raises(DataError) as e:
        download([url], dest, wanted, timeout=5)
    msg = str(e.value)
    assert "bad.bin" in msg and wanted in msg and sha(body) in msg
    assert os.listdir(tmp_path) == []  # neither final nor temporary file


@pytest.mark.parametrize("mode", ["truncate", "nolength"])
def test_download_dropped_connection_leaves_no_file(server, tmp_path, mode):
    body = os.urandom(100_000)
    url = server.add(f"/drop-{mode}.bin", body, mode=mode)
    dest = tmp_path / "drop.bin"
    with pytest.raises(DataError):
        download([url], dest, sha(body), timeout=5)
    assert os.listdir(tmp_path) == []


def test_download_timeout(server, tmp_path):
    body = b"slow"
    url = server.add("/slow", body, mode="hang")
    with pytest.raises(DataError, match="timed out"):
        download([url], tmp_path / "slow", sha(body), timeout=0.2)
    assert os.listdir(tmp_path) == []


def test_partial_file_is_not_taken_for_complete(server, tmp_path, dead_url):
    body = b"complete file" * 10
    dest = tmp_path / "f.bin"
    # Leftovers of an interrupted run, even with the right bytes, are not
    # used: only a file at the final name is.
    (tmp_path / "f.bin.part").write_bytes(body)
    (tmp_path / "tmpabc123").write_bytes(body)
    with pytest.raises(DataError):
        download([dead_url + "f.bin"], dest, sha(body), timeout=5)
    assert not dest.exists()
    # Nor do they get in the way of a real download.
    url = server.add("/f.bin", body)
    download([url], dest, sha(body), timeout=5)
    assert dest.read_bytes() == body


def test_download_falls_back_to_second_mirror(server, tmp_path, dead_url):
    body = b"mirrored" * 1000
    good = server.add("/m2/file.bin", body)
    bad_sum = server.add("/m3/file.bin", b"corrupt copy")
    urls = [dead_url + "file.bin", server.base + "/m1/file.bin", bad_sum, good]  # refused, 404, bad sum, good
    dest = tmp_path / "file.bin"
    download(urls, dest, sha(body), timeout=5)
    assert dest.read_bytes() == body
    assert os.listdir(tmp_path) == ["file.bin"]


def test_download_offline_message(server, tmp_path, dead_url):
    dest = tmp_path / "data" / "train-images-idx3-ubyte.gz"
    urls = [dead_url + "x", server.base + "/missing"]
    with pytest.raises(DataError) as e:
        download(urls, dest, "a" * 64, timeout=5)
    msg = str(e.value)
    assert "put it at exactly" in msg and str(dest) in msg and "a" * 64 in msg
    assert urls[0] in msg and urls[1] in msg and "404" in msg
    assert not dest.exists()


def test_corrupt_cached_file_is_downloaded_again_and_kept_as_bad(server, tmp_path, capsys):
    body = b"the real thing" * 50
    url = server.add("/re.bin", body)
    dest = tmp_path / "re.bin"
    dest.write_bytes(b"bit rot")
    download([url], dest, sha(body), timeout=5)
    assert dest.read_bytes() == body
    # never deleted: moved aside before the verified copy came in
    assert sorted(os.listdir(tmp_path)) == ["re.bin", "re.bin.bad"]
    assert (tmp_path / "re.bin.bad").read_bytes() == b"bit rot"
    err = capsys.readouterr().err
    assert "corrupt" in err and str(dest) in err and f"kept as {dest}.bad" in err
    # a later bad copy replaces the older .bad (one .bad per file, the latest)
    dest.write_bytes(b"more bit rot")
    download([url], dest, sha(body), timeout=5)
    assert dest.read_bytes() == body and (tmp_path / "re.bin.bad").read_bytes() == b"more bit rot"
    assert sorted(os.listdir(tmp_path)) == ["re.bin", "re.bin.bad"]


def test_the_bad_copy_is_moved_only_once_a_verified_copy_is_there(server, tmp_path, monkeypatch):
    """At the moment the cached copy is moved aside, the verified download is complete on
    disk beside it; a failure to move it aside leaves both, and says where."""
    body = b"verified" * 100
    url = server.add("/order.bin", body)
    dest = tmp_path / "order.bin"
    dest.write_bytes(b"old")
    seen = []
    real_replace = os.replace

    def replace(src, dst):
        seen.append((os.path.basename(src), os.path.basename(dst), open(src, "rb").read()))
        if os.path.basename(dst) == "order.bin.bad":
            assert (tmp_path / "order.bin.download").read_bytes() == body  # the verified copy is already there
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    download([url], dest, sha(body), timeout=5)
    assert [(s, d) for s, d, _ in seen][-2:] == [("order.bin", "order.bin.bad"), ("order.bin.download", "order.bin")]

    # ... and where the bad copy cannot be moved aside, nothing is lost and the error says so
    dest.write_bytes(b"old again")
    (tmp_path / "order.bin.bad").unlink()
    (tmp_path / "order.bin.bad").mkdir()
    (tmp_path / "order.bin.bad" / "x").write_bytes(b"")  # a non-empty folder: os.replace fails
    monkeypatch.setattr(os, "replace", real_replace)
    with pytest.raises(DataError) as e:
        download([url], dest, sha(body), timeout=5)
    msg = str(e.value)
    assert "could not move the bad cached copy aside" in msg and str(tmp_path / "order.bin.download") in msg
    assert dest.read_bytes() == b"old again" and (tmp_path / "order.bin.download").read_bytes() == body


def test_a_verified_download_left_by_an_interrupted_run_is_used(server, tmp_path, dead_url):
    body = b"complete and verified" * 10
    dest = tmp_path / "i.bin"
    dest.write_bytes(b"bad")
    (tmp_path / "i.bin.download").write_bytes(body)  # the run stopped between its two renames
    download([dead_url + "i.bin"], dest, sha(body), timeout=5)  # offline: its checksum is enough
    assert dest.read_bytes() == body and (tmp_path / "i.bin.bad").read_bytes() == b"bad"
    # a leftover that is not the file is not used
    (tmp_path / "j.bin.download").write_bytes(b"something else")
    with pytest.raises(DataError):
        download([dead_url + "j.bin"], tmp_path / "j.bin", sha(body), timeout=5)
    assert not (tmp_path / "j.bin").exists()


def test_corrupt_cached_file_is_kept_until_replaced(server, tmp_path, dead_url):
    body = b"the real thing" * 50
    bad_mirror = server.add("/kept/re.bin", b"another bad copy")
    dest = tmp_path / "re.bin"
    dest.write_bytes(b"old copy")
    with pytest.raises(DataError) as e:
        download([dead_url + "re.bin", bad_mirror], dest, sha(body), timeout=5)
    assert dest.read_bytes() == b"old copy"  # offline, the user keeps it
    assert os.listdir(tmp_path) == ["re.bin"]
    msg = str(e.value)
    assert "left in place" in msg and sha(b"old copy") in msg and str(dest) in msg
    assert msg.splitlines()[-1] == (
        f"The bad copy there (sha256 {sha(b'old copy')}) was left in place, unchanged, at {dest}; replace it."
    )


def test_default_data_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("NANOAR_DATA", str(tmp_path / "n"))
    assert default_data_dir() == str(tmp_path / "n")
    monkeypatch.delenv("NANOAR_DATA")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_data_dir() == os.path.join(str(tmp_path / "x"), "nanoar")
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "h"))
    assert default_data_dir() == os.path.join(str(tmp_path / "h"), ".cache", "nanoar")


# ---------------------------------------------------------------------------
# Without pooch
# ---------------------------------------------------------------------------


def test_cached_file_needs_no_pooch(no_pooch, tmp_path):
    dest = tmp_path / "by-hand.bin"
    dest.write_bytes(b"put here by hand")
    assert download(["http://127.0.0.1:9/x"], dest, sha(b"put here by hand")) == str(dest)
    assert download(["http://127.0.0.1:9/x"], dest, None) == str(dest)


def test_download_without_pooch_is_one_clear_line(no_pooch, tmp_path):
    dest = tmp_path / "missing.bin"
    with pytest.raises(DataError) as e:
        download(["http://127.0.0.1:9/x"], dest, "b" * 64)
    msg = str(e.value)
    assert "\n" not in msg
    assert "pip install pooch" in msg and "pip install -e '.[scripts]'" in msg and str(dest) in msg
    # A cached copy with the wrong checksum is kept, and the message says why.
    dest.write_bytes(b"wrong")
    with pytest.raises(DataError, match="wrong checksum") as e:
        download(["http://127.0.0.1:9/x"], dest, "b" * 64)
    assert "\n" not in str(e.value) and dest.read_bytes() == b"wrong"


def test_importing_nanoar_does_not_import_pooch():
    code = (
        "import sys, nanoar, nanoar.datasets, nanoar.checkpoint; "
        "print(sorted(m for m in ('pooch', 'requests') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ---------------------------------------------------------------------------
# atomic_write
# ---------------------------------------------------------------------------


def test_atomic_write_replaces_whole_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with atomic_write(path) as f:
        f.write(b"new contents")
    assert path.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["f"]
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # as a plain open() would make it


def test_atomic_write_error_keeps_old_file(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(path) as f:
            f.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["f"]
