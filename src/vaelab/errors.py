"""The one error type that vaelab shows to users.

A :class:`VaelabError` carries a single line that names the culprit (a file, an option, a
shape or a value) and says how to fix it. The CLI prints it without a traceback and exits
with status 2; Python callers can catch it like any other exception.
"""

from __future__ import annotations

__all__ = ["VaelabError"]


class VaelabError(ValueError):
    """A user-facing error: bad input, a missing file, an unknown option value."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))  # always one line
