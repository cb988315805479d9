"""Files on disk that built-in data sets come in: IDX arrays, checked downloads, the cache.

IDX is the format of the MNIST family: a 4-byte magic number ``00 00 TT NN`` (``TT`` the
element type, ``NN`` the number of dimensions), ``NN`` big-endian ``uint32`` sizes, then the
elements in big-endian C order. The files are usually gzipped; :func:`read_idx` tells the two
apart by their first bytes, not by their names.

>>> import numpy as np, tempfile, pathlib
>>> path = pathlib.Path(tempfile.mkdtemp()) / "x-idx3-ubyte.gz"
>>> write_idx(path, np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
>>> read_idx(path).shape
(2, 3, 4)
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
import zlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from vaelab.errors import VaelabError

__all__ = ["read_idx", "write_idx", "download", "cache_dir", "md5sum"]

# IDX element-type byte -> big-endian numpy dtype
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_CHUNK = 1 << 20  # bytes per read when downloading or hashing


def cache_dir(cache: str | os.PathLike[str] | None = None) -> Path:
    """The folder where downloaded data sets are kept (not created here).

    The argument wins, then the environment variable ``VAELAB_CACHE``, then
    ``~/.cache/vaelab``.

    >>> cache_dir("/tmp/vaelab-cache")
    PosixPath('/tmp/vaelab-cache')
    """
    if cache is not None:
        return Path(cache).expanduser()
    env = os.environ.get("VAELAB_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "vaelab"


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (gzipped or raw) into a native-byte-order numpy array.

    Raises :class:`VaelabError` naming the file when it is missing, not gzip/IDX, or truncated.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise VaelabError(f"IDX file '{path}' not found; check the path") from None
    except OSError as err:
        raise VaelabError(
            f"IDX file '{path}' cannot be read ({err.strerror}); check its permissions"
        ) from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise VaelabError(
                f"IDX file '{path}' is a damaged gzip file ({err}); delete it and download it again"
            ) from None
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Decode the bytes of an uncompressed IDX file; ``path`` is only for messages."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        magic = raw[:4].hex(" ") or "empty"
        raise VaelabError(
            f"IDX file '{path}' has a bad magic number ({magic}); expected 00 00 TT NN with type "
            f"TT in 08/09/0b/0c/0d/0e and NN >= 1 dimensions; is it really an IDX file?"
        )
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise VaelabError(
            f"IDX file '{path}' is truncated inside its header ({len(raw)} of {header} bytes); "
            f"delete it and download it again"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    found = len(raw) - header
    if found != expected:
        what = "truncated" if found < expected else "longer than its header says"
        raise VaelabError(
            f"IDX file '{path}' is {what}: shape {dims} needs {expected} bytes of data, found "
            f"{found}; delete it and download it again"
        )
    array = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))  # a writable native-order copy


def write_idx(path: str | os.PathLike[str], array: np.ndarray) -> None:
    """Write ``array`` as an IDX file, gzipped when the name ends in ``.gz``.

    Supported dtypes: uint8, int8, int16, int32, float32, float64 (IDX has no others). The gzip
    header carries no time stamp, so equal arrays give byte-equal files.
    """
    array = np.asarray(array)
    codes = {dt.newbyteorder("="): code for code, dt in _IDX_DTYPES.items()}
    code = codes.get(array.dtype.newbyteorder("="))
    if code is None:
        raise VaelabError(
            f"write_idx: dtype {array.dtype} has no IDX code; convert with .astype(...) to one of "
            f"uint8, int8, int16, int32, float32, float64"
        )
    if not 1 <= array.ndim <= 255:
        raise VaelabError(f"write_idx: array of shape {array.shape} must have 1 to 255 dimensions")
    big = array.astype(_IDX_DTYPES[code], copy=False)
    payload = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    payload += np.ascontiguousarray(big).tobytes()
    path = Path(path)
    if path.name.endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)
    path.write_bytes(payload)


def md5sum(path: str | os.PathLike[str]) -> str:
    """The hexadecimal md5 checksum of a file, read in chunks."""
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(
    url_or_urls: str | Sequence[str],
    dest: str | os.PathLike[str],
    md5: str,
    *,
    timeout: float = 30.0,
) -> Path:
    """Download a file to ``dest`` and check its md5, trying mirrors in order.

    A file already at ``dest`` with the right checksum is kept and nothing is fetched; one with
    another checksum (a damaged cache) is downloaded again, and when that fails the error says
    the cached file does not match its checksum and names it to delete. Each
    attempt streams into a temporary file beside ``dest``, which replaces ``dest`` only once
    its checksum matches, so an interrupted or corrupt download never leaves a bad ``dest``.
    A mirror that fails (network error, HTTP error, wrong checksum) is skipped; when all fail,
    a :class:`VaelabError` lists each URL with its reason and says where to put the file by
    hand. Progress goes to stderr.
    """
    from tqdm import tqdm  # progress bar only where a download actually happens

    dest = Path(dest)
    urls = [url_or_urls] if isinstance(url_or_urls, str) else list(url_or_urls)
    if not urls:
        raise VaelabError(f"download of '{dest.name}': no URL given")
    md5 = md5.lower()
    stale = _cached_md5(dest)  # None: nothing there yet
    if stale == md5:
        return dest

    failures: list[str] = []
    mismatch: str | None = None
    for url in urls:
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
        except OSError as err:
            raise VaelabError(
                f"cannot write to the cache folder '{dest.parent}' ({err.strerror}); set "
                f"VAELAB_CACHE or pass a writable cache folder"
            ) from None
        tmp = Path(tmp_name)
        digest = hashlib.md5(usedforsecurity=False)
        try:
            request = urllib.request.Request(url, headers={"User-Agent": "vaelab"})
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(request, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
                with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name, file=sys.stderr,
                          leave=False) as bar:
                    while chunk := resp.read(_CHUNK):
                        out.write(chunk)
                        digest.update(chunk)
                        bar.update(len(chunk))
        except (OSError, http.client.HTTPException, ValueError) as err:  # URLError is an OSError
            tmp.unlink(missing_ok=True)
            reason: object = getattr(err, "reason", None) or err
            if isinstance(err, urllib.error.HTTPError):
                reason = f"HTTP {err.code} {err.reason}"
            failures.append(f"{url} ({reason})")
            continue
        actual = digest.hexdigest()
        if actual != md5:
            tmp.unlink(missing_ok=True)
            mismatch = f"expected md5 {md5}, got {actual}"
            failures.append(f"{url} (wrong checksum: {mismatch})")
            continue
        os.replace(tmp, dest)
        return dest

    if stale is not None:  # a damaged cached file, and no good copy to replace it with: say so first
        raise VaelabError(
            f"cached file '{dest}' does not match its checksum (md5 {stale}, expected {md5}): it is damaged (an "
            f"interrupted copy?) or another file; downloading it again failed ({'; '.join(failures)}); delete it "
            f"(rm '{dest}') and run again with a network connection to download it, or place the right file there "
            "by hand"
        )
    if mismatch is not None and len(failures) == 1:
        raise VaelabError(
            f"download of '{dest.name}' from {urls[0]} failed its checksum ({mismatch}); the file "
            f"was deleted; the server sent a different file: get the right one by hand and place "
            f"it at '{dest}'"
        )
    raise VaelabError(
        f"could not download '{dest.name}': " + "; ".join(failures)
        + f"; check the network, or download the file by hand and place it at '{dest}' "
        f"(md5 {md5})"
    )


def _cached_md5(dest: Path) -> str | None:
    """The md5 of the file already at ``dest`` (None when there is none); a path there that is
    not a file, or a file that cannot be read, is a one-line error naming it."""
    if not os.path.lexists(dest):
        return None
    if not dest.is_file():
        raise VaelabError(f"cached file '{dest}' is not a regular file (a folder, or a broken link); remove it and run "
                          "again to download it")
    try:
        return md5sum(dest)
    except OSError as err:
        raise VaelabError(f"cached file '{dest}' cannot be read ({err.strerror}); check its permissions, or delete it "
                          "and run again to download it") from None
