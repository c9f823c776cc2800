"""Error messages that are safe to log and store when the error came from untrusted data.

Decoder and protocol errors sometimes quote what they were reading (`broken PNG file (chunk
b'...')`, a status line a server sent). `safe_message` keeps the exception class and its
message with quoted literals removed, printable ASCII only, bounded in length, so rejects,
failed caption rows and logs never carry bytes from a response or a file.
"""

from __future__ import annotations

import re

_LITERAL = re.compile(r"""b?(['"]).*?\1""")
_UNPRINTABLE = re.compile(r"[^\x20-\x7e]+")


def safe_message(err: BaseException, limit: int = 160) -> str:
    """`ExceptionType: message` with quoted literals (which may hold file contents) removed."""
    text = _LITERAL.sub("<...>", str(err))
    text = _UNPRINTABLE.sub(" ", text).strip()
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__
