"""Text that came from a server, made safe to print on a terminal.

A hostile (or broken) server chooses file names, owner DNs, error reasons and
the status JSON the command line prints. Written raw, an ``ESC`` in them is a
terminal escape sequence: it can rewrite what is on the screen (hide an
error, fake a prompt), set the window title, or, on some terminals, answer
back as if typed. So every control character is written as a visible escape
before anything is printed:

* C0 controls (U+0000–U+001F, tab and newline among them), DEL (U+007F) and
  C1 controls (U+0080–U+009F) as ``\\xHH``: ESC is the four characters ``\\x1b``;
* the Unicode characters that reorder or break a line (bidirectional marks,
  embeddings, overrides and isolates; line and paragraph separators) as
  ``\\uHHHH``: U+202E is ``\\u202e``.

A backslash is left as it is (the escapes are for safety, not a reversible
encoding), so escaping is idempotent. JSON output (``--json``) is escaped by
JSON itself: :func:`json_text` writes every character outside printable
ASCII (C0, DEL, C1, all non-ASCII) as ``\\uHHHH``.
"""

from __future__ import annotations

import json
import re

_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str) -> str:
    """``text`` with every control character written as a visible escape (``ESC`` → ``\\x1b``)."""
    return _UNSAFE.sub(_escape, text)


def printable_lines(text: str) -> str:
    """Several lines (a traceback): each made :func:`printable`, the line breaks kept."""
    return "".join(printable(line) + "\n" for line in text.splitlines())


def json_text(data: object) -> str:
    """``data`` as indented JSON with no raw control character (everything outside printable ASCII as ``\\uHHHH``)."""
    return json.dumps(data, indent=1, ensure_ascii=True)


__all__ = ["json_text", "printable", "printable_lines"]
