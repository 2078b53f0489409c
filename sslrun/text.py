"""What counts as printable text in a value or a file name, decided in one place.

Values reach sbatch scripts, command lines, folder names, CSV files and terminals; file names
become sample ids in manifests and submission CSVs. A character that breaks a line (a newline,
but also U+2028, which Python's splitlines() honours), a control character (ESC, DEL), a bidi
override that makes `gnp.exe` read as `exe.png`, or a lone surrogate (a non-UTF-8 byte from
argv or the file system) is refused wherever such text enters, never cleaned up downstream.
"""

from __future__ import annotations

import unicodedata

# Bidi embeddings, overrides and isolates: they reorder what a terminal shows.
_BIDI = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
_BAD_CATEGORIES = frozenset(("Cc", "Cs", "Zl", "Zp"))


def bad_char(text: str) -> str | None:
    """The first character of `text` that is not printable text in the sense above, or None."""
    if text.isascii():  # the common case: only C0 controls and DEL can be wrong
        return None if text.isprintable() else next(c for c in text if c < " " or c == "\x7f")
    for c in text:
        if c in _BIDI or unicodedata.category(c) in _BAD_CATEGORIES:
            return c
    return None


def shown(c: str) -> str:
    """A refused character as a user can read it: '\\n', '\\x1b', 'U+202E'."""
    if 0xDC80 <= ord(c) <= 0xDCFF:  # how Python keeps a non-UTF-8 byte of argv or a file name
        return f"non-UTF-8 byte 0x{ord(c) - 0xDC00:02x}"
    if c in "\n\t\r" or ord(c) < 0x100:
        return repr(c)[1:-1]
    return f"U+{ord(c):04X}"
