"""Text for a terminal: names from packets and /proc are shown, never obeyed.

A process can name itself (``prctl(PR_SET_NAME)``, argv[0]) and a packet can
carry any byte in a DNS label, so a name may hold an escape sequence that
would clear the screen, move the cursor or rewrite what an analyst reads.
:func:`safe` turns every control character (C0, DEL, C1), and the Unicode
bidirectional overrides that reorder what is shown, into a visible escape.
"""

from __future__ import annotations

import re

# C0 except newline, DEL, C1, and the bidi embedding/override/isolate controls
_UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def _escape(m: re.Match) -> str:
    c = ord(m.group())
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def safe(text: str) -> str:
    """``text`` with every control character shown as ``\\xNN`` (newlines kept)."""
    return _UNSAFE.sub(_escape, text)
