"""The one check every data path goes through before a reader opens it.

:func:`check_data_path` refuses, in one line, a path that no reader should open: an empty
path (``--data ''`` would read the current folder), a loop of symbolic links, and anything
that is not a regular file or a folder once symbolic links are followed: a FIFO (reading one
waits for a writer forever), a character or block device (``/dev/zero`` never ends), a
socket. A path that does not exist passes: the reader says "not found" with what it expected.

>>> check_data_path("/dev/null")
Traceback (most recent call last):
    ...
vaelab.errors.VaelabError: data '/dev/null' is not a regular file (a character device); pass --data with a file or a folder
"""

from __future__ import annotations

import errno
import os
import stat

from vaelab.errors import VaelabError

__all__ = ["check_data_path"]

_KINDS = ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def check_data_path(path: str | os.PathLike[str], what: str = "data") -> None:
    """Refuse an empty path, a symbolic-link loop, and a path that is neither a regular file nor
    a folder (after following symbolic links); a missing path passes (its reader names it)."""
    text = os.fspath(path)
    if not str(text).strip():
        raise VaelabError(f"the {what} path is empty; pass --data with a file, a folder or a built-in data set's name")
    try:
        st = os.stat(text)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise VaelabError(f"{what} '{text}' is a loop of symbolic links; point it at a file or a folder") from None
        return  # missing (or unreadable): the reader says so, with what it expected
    if stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode):
        return
    kind = next((name for test, name in _KINDS if test(st.st_mode)), "a special file")
    raise VaelabError(f"{what} '{text}' is not a regular file ({kind}); pass --data with a file or a folder")
