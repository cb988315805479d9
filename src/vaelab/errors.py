"""The one error type that vaelab shows to users.

A :class:`VaelabError` carries a single line that names the culprit (a file, an option, a
shape or a value) and says how to fix it. The CLI prints it without a traceback and exits
with status 2; Python callers can catch it like any other exception.
"""

from __future__ import annotations

import re

__all__ = ["VaelabError", "printable"]


class VaelabError(ValueError):
    """A user-facing error: bad input, a missing file, an unknown option value."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line


# C0 controls (ESC among them), DEL, C1 controls, and lone surrogates (the undecodable bytes of a
# file name, as Python reads them): what a terminal could take for a command
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def _escaped(char: str) -> str:
    code = ord(char)
    if 0xDC80 <= code <= 0xDCFF:  # a byte of a name that is not UTF-8: shown as that byte
        return f"\\x{code - 0xDC00:02x}"
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, keep: str = "") -> str:
    """``text`` safe to print on a terminal: every control character (C0, ESC and DEL, C1) and
    every undecodable byte of a file name written as an escape (``\\x1b``), except those in
    ``keep`` (``"\\n\\t"`` for tables and listings). Names of files, folders and columns reach the
    terminal in messages and tables; an escape sequence in one would retitle the window or
    clear the screen."""
    return _UNSAFE.sub(lambda m: m.group() if m.group() in keep else _escaped(m.group()), text)
