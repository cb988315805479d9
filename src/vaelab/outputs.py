"""Writing files safely: every output checked before the first write, every file replaced atomically.

A command that writes several files first asks :func:`check_writable` about each of them, so
that a bad path (an empty ``-o``, a folder, a parent that is a file, a read-only folder, or a
file that is one of the command's own inputs) is refused before anything is written. Then
each file is written by :func:`atomic_write_bytes`: a hidden temporary file ``.NAME.XXXX.tmp``
in the target folder, flushed to disk, given the usual permissions (``0666 & ~umask``, the
same as any other file of a run folder) and moved over the target with ``os.replace``, so a
reader sees the old file or the new one, never a part. A crash can leave a temporary file
behind; :func:`clean_stale_temps` removes them (each write removes its own target's old ones,
and training removes every one in its run folder, which it holds locked).

Operating-system errors (a full disk, a folder made read-only meanwhile) become one-line
:class:`~vaelab.errors.VaelabError` messages that name the path.
"""

from __future__ import annotations

import errno
import functools
import os
import re
import tempfile
import time
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Callable, Iterable, TypeVar

from .errors import VaelabError

__all__ = [
    "check_writable",
    "check_folder",
    "atomic_write_bytes",
    "atomic_write_text",
    "atomic_write_with",
    "clean_stale_temps",
    "os_error",
    "check_run_name",
    "create_run_folder",
    "lock_folder",
    "check_unlocked",
    "releases_locks",
    "STALE_SECONDS",
    "LOCK",
]

STALE_SECONDS = 3600.0  # a temporary file older than this is left over from an interrupted write
LOCK = ".lock"  # the lock file of a run folder (fcntl.flock, held while a process writes the run)


def os_error(err: OSError, path: str | os.PathLike, doing: str = "write") -> VaelabError:
    """A one-line :class:`VaelabError` for ``err`` raised while ``doing`` ``path``."""
    reason = err.strerror or type(err).__name__
    name = Path(path).name
    m = re.fullmatch(r"\.(.+)\.[^.]+\.tmp", name)  # a temporary file of ours: name the file it stands for
    if m:
        path = Path(path).with_name(m.group(1))
    hint = {
        errno.ENOSPC: "free some disk space and try again",
        errno.EDQUOT: "free some disk space and try again",
        errno.EACCES: "choose a folder you may write to",
        errno.EPERM: "choose a folder you may write to",
        errno.EROFS: "choose a folder on a writable disk",
    }.get(err.errno or 0, "check the path")
    return VaelabError(f"cannot {doing} '{path}' ({reason}); {hint}")


def _existing_ancestor(folder: Path) -> Path:
    """The nearest ancestor of ``folder`` (itself included) that exists."""
    for p in (folder, *folder.parents):
        if os.path.lexists(p):
            return p
    return Path(".")


def _folder_problem(folder: Path) -> str | None:
    """Why files cannot be written in ``folder`` (made if missing), or None."""
    top = _existing_ancestor(folder)
    if not top.is_dir():
        return f"'{top}' is a file, not a folder; choose another path"
    if not os.access(top, os.W_OK | os.X_OK):
        return f"the folder '{top}' is read-only; choose a folder you may write to"
    return None


def check_folder(folder: str | os.PathLike, what: str = "output folder") -> Path:
    """Check that ``folder`` is, or can be made as, a folder we may write in; returns it.

    Missing folders are fine (they are made at the first write) as long as the nearest one
    that exists is a writable folder; no part of the path may be a file.
    """
    if str(folder) == "":
        raise VaelabError(f"the {what} is empty; give a folder name")
    path = Path(folder)
    problem = _folder_problem(path)
    if problem is not None:
        raise VaelabError(f"cannot write in the {what} '{path}': {problem}")
    return path


def check_writable(
    path: str | os.PathLike,
    what: str = "output",
    *,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Check, before anything is written, that ``path`` can be written as a file; returns it.

    Refused with a one-line :class:`VaelabError`: an empty path, a path that is a folder,
    a parent path through a file or a read-only folder, a path that is one of ``inputs``
    (the same file, through symbolic or hard links too): writing there would destroy an input;
    an existing target that is read-only or not a plain file (``/dev/null``), and a folder in
    which no file can be made (``/proc``: tried with a temporary file, removed at once).
    Missing parent folders are fine (they are made at the write).
    """
    if str(path) == "":
        raise VaelabError(f"the {what} path is empty; give a file name, e.g. -o out.png")
    p = Path(path)
    if p.is_dir():
        raise VaelabError(f"the {what} '{p}' is a folder; give a file name inside it, e.g. '{p / 'out'}'")
    problem = _folder_problem(p.parent)
    if problem is not None:
        raise VaelabError(f"cannot write the {what} '{p}': {problem}")
    for source in inputs:
        src = Path(source)
        if src.is_dir() and (os.path.realpath(p.parent) + os.sep).startswith(os.path.realpath(src) + os.sep):
            raise VaelabError(f"the {what} '{p}' lies inside the input folder '{src}'; writing it would change the "
                              "input: choose another output path")
        if not src.is_file():
            continue
        same = os.path.lexists(p) and p.exists() and os.path.samefile(p, src)
        if same or os.path.realpath(p) == os.path.realpath(src):
            raise VaelabError(f"the {what} '{p}' is the input '{src}'; writing it would destroy the input: "
                              "choose another output path")
    if p.exists() and not p.is_file():  # /dev/null, a pipe: the atomic rename would put a file in its place
        raise VaelabError(f"the {what} '{p}' exists and is not a plain file (a device or a pipe); choose another path")
    if p.is_file() and not os.access(p, os.W_OK):  # the rename would replace it all the same
        raise VaelabError(f"the {what} '{p}' is read-only, so it is kept; to replace it, make it writable "
                          f"(chmod u+w '{p}') or move it away")
    if p.parent.is_dir():  # (a missing folder is made at the write; its nearest existing one was checked above)
        try:  # what the write itself does first: a temporary file beside the target (a read-only mount, /proc)
            fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
        except OSError as err:
            raise VaelabError(f"cannot write the {what} '{p}': no file can be made in '{p.parent}' "
                              f"({err.strerror or type(err).__name__}); choose a folder you may write to") from None
        os.close(fd)
        try:
            os.unlink(tmp)
        except OSError:  # (already gone: training removes stray temporary files in its run folder)
            pass
    return p


def clean_stale_temps(folder: str | os.PathLike, name: str | None = None, older_than: float = STALE_SECONDS) -> list[Path]:
    """Remove the hidden temporary files of interrupted writes in ``folder``; returns them.

    Only files named like this module's temporaries (``.NAME.XXXX.tmp``, for target ``name``
    when given) and last modified more than ``older_than`` seconds ago; errors are ignored
    (a temporary file is never worth failing for).
    """
    folder = Path(folder)
    prefix = f".{name}." if name is not None else "."
    cutoff = time.time() - older_than
    removed: list[Path] = []
    try:
        candidates = [p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")
                      and len(p.name) > len(prefix) + len(".tmp")]
    except OSError:
        return removed
    for tmp in candidates:
        try:
            if tmp.is_file() and not tmp.is_symlink() and tmp.stat().st_mtime <= cutoff:
                tmp.unlink()
                removed.append(tmp)
        except OSError:
            pass
    return removed


def atomic_write_with(path: str | os.PathLike, write: Callable[[str], object]) -> None:
    """Call ``write(tmp)`` to fill a temporary file beside ``path``, then move it over ``path``.

    The temporary file gets the permissions an ordinary new file would (``0666 & ~umask``)
    whatever ``write`` did to it; on any failure it is removed, and an OS error becomes a
    one-line VaelabError naming ``path``.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
    except OSError as err:
        raise os_error(err, path) from None
    umask = os.umask(0)
    os.umask(umask)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp (and safetensors) make 0600: the usual permissions
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise os_error(err, path) from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    clean_stale_temps(path.parent, path.name)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old or the new file, never a part."""
    atomic_write_with(path, lambda tmp: Path(tmp).write_bytes(data))


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Text version of :func:`atomic_write_bytes` (UTF-8)."""
    atomic_write_bytes(path, text.encode("utf-8"))


# --- run folders: made exclusively, locked while written -------------------------------------


MAX_NAME_BYTES = 200  # a run folder's name (file systems allow 255; the default name may get a -N suffix)


def check_run_name(name: str) -> str:
    """A run folder name must be one plain folder name inside ``--out``: no separators, no ``..``."""
    if name in (".", "..") or "/" in name or "\\" in name or "\0" in name or os.path.isabs(name) \
            or (os.altsep is not None and os.altsep in name):
        raise VaelabError(f"run name {name!r} must be a plain folder name inside --out (no '/', '..' or absolute "
                          "path); put the folder path in --out")
    if name.startswith("."):
        raise VaelabError(f"run name {name!r} must not start with '.' (a hidden folder); choose another --name")
    if not name.strip():
        raise VaelabError(f"--name {name!r} is empty or blank; give a run folder name, or leave --name out for the "
                          "default <data>-<date>-<time>")
    if any(ord(ch) < 32 or 127 <= ord(ch) < 160 for ch in name):
        raise VaelabError(f"--name {name!r} holds control characters (a newline, a tab, an escape); choose a name "
                          "without them")
    if len(name.encode("utf-8", "surrogateescape")) > MAX_NAME_BYTES:
        raise VaelabError(f"--name is {len(name.encode('utf-8', 'surrogateescape'))} bytes long (UTF-8); a run folder "
                          f"name may have at most {MAX_NAME_BYTES}: choose a shorter --name")
    return name


def create_run_folder(parent: str | os.PathLike, name: str, *, unique: bool) -> Path:
    """Make the run folder ``parent/name`` exclusively and lock it (:func:`lock_folder`); returns it.

    ``unique``: ``name`` is a default name, so on a collision (another run started in the same
    second) the next free ``name-2``, ``name-3``, ... is taken. Otherwise an existing folder is
    refused unless it is empty (a folder the user made beforehand).
    """
    parent = check_folder(parent, "--out folder")
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise os_error(err, parent, "create") from None
    for i in range(1, 10_000):
        folder = parent / (name if i == 1 else f"{name}-{i}")
        try:
            folder.mkdir()
        except FileExistsError:
            if unique:
                continue
            if not folder.is_dir():
                raise VaelabError(f"'{folder}' exists and is not a folder; choose another --name") from None
            for check in (False, True):  # before taking the lock (which makes a file), and again holding it
                if any(not p.name.startswith(".") for p in folder.iterdir()):
                    what = "already holds a run" if (folder / "config.json").exists() else "exists and is not empty"
                    raise VaelabError(f"run folder '{folder}' {what}; choose another --name, or continue it with "
                                      f"--resume '{folder}'") from None
                if not check:
                    lock_folder(folder)
            return folder
        except OSError as err:
            raise os_error(err, folder, "create") from None
        lock_folder(folder)
        return folder
    raise VaelabError(f"no free run folder name '{name}-N' in '{parent}'; give one with --name")


_HELD: ContextVar[list[int] | None] = ContextVar("vaelab_held_locks", default=None)
F = TypeVar("F", bound=Callable[..., Any])


def releases_locks(f: F) -> F:
    """Decorator: the folder locks taken during a call of ``f`` are released when it ends."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        held: list[int] = []
        token = _HELD.set(held)
        try:
            return f(*args, **kwargs)
        finally:
            _HELD.reset(token)
            for fd in held:
                os.close(fd)  # closing the descriptor releases its flock

    return wrapper  # type: ignore[return-value]


def lock_folder(folder: str | os.PathLike) -> None:
    """Lock ``folder`` (``fcntl.flock`` on ``folder/.lock``) for the rest of the enclosing
    :func:`releases_locks` call, or refuse if another process (or call) holds it.

    The lock belongs to the open file: it dies with the process, so a run killed with -9 leaves
    no stale lock behind. (Without ``fcntl``, on Windows, folders are not locked.)
    """
    held = _HELD.get()
    if held is None:
        raise RuntimeError("lock_folder needs an enclosing @releases_locks call")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        raise os_error(err, path, "create the lock file") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _in_use(folder, path) from None
    held.append(fd)


def _in_use(folder: str | os.PathLike, path: Path) -> VaelabError:
    return VaelabError(f"run folder '{folder}' is in use by another vaelab process (it holds '{path}'); "
                       "wait until that one finishes")


def check_unlocked(folder: str | os.PathLike, *, hold: bool = False) -> None:
    """Refuse, with :func:`lock_folder`'s message, a run folder another process holds locked
    (training it), writing nothing (no lock file is made). ``hold``: keep a shared lock for the
    rest of the enclosing :func:`releases_locks` call, so that no training starts meanwhile
    (a reader such as ``vaelab verify``)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        return
    path = Path(folder) / LOCK
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # no lock file (a folder no vaelab process has locked), or unreadable: nobody to wait for
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        raise _in_use(folder, path) from None
    held = _HELD.get() if hold else None
    if held is None:
        os.close(fd)
    else:
        held.append(fd)
