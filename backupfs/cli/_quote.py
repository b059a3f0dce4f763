"""How the CLI shows stored names: escaped for a terminal, exact in JSON.

Names, symlink targets, hosts and tags come from the repository, where anyone holding the key
(or a buggy client) can write any bytes. Printed raw, a newline forges an output line and an
escape sequence drives the terminal. So every stored string a command prints on a terminal
stream goes through `escape` (as `ls -b` and restic's quoting do), and `--json` output carries
names exactly (`json_name`). docs/format.md section 9 documents both forms.
"""

from __future__ import annotations

import base64
import logging
import re

# Printable ASCII except the backslash: most names are only these, and are shown as they are.
_PLAIN = re.compile(r"[\x20-\x5b\x5d-\x7e]*")
_NAMED = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}
_ESCAPED_BYTE = range(0xDC80, 0xDD00)  # surrogateescape's stand-ins for bytes that are not UTF-8


def escape(text: str | bytes) -> str:
    """`text` with every character a terminal would act on, or that would not show as itself,
    written as a backslash escape: `\\n`, `\\t`, `\\r`, `\\\\`, `\\xHH` for a control character
    or a byte that is not UTF-8, `\\uHHHH` / `\\UHHHHHHHH` for other unprintable characters
    (format characters such as bidi overrides, line separators, non-ASCII spaces). Unambiguous:
    a backslash is always doubled. Bytes are read as UTF-8."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "surrogateescape")
    if _PLAIN.fullmatch(text):
        return text
    out = []
    for ch in text:
        code = ord(ch)
        if ch in _NAMED:
            out.append(_NAMED[ch])
        elif code in _ESCAPED_BYTE:
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch.isprintable():
            out.append(ch)
        elif code < 0x80:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


def json_name(key: str, raw: bytes) -> dict[str, str]:
    """`{key: text}` for a stored name: its UTF-8 text when it is valid UTF-8 (JSON escapes control
    characters itself); otherwise the text with U+FFFD for each invalid byte, which any JSON
    parser accepts, and `key + "_bytes"`: the exact name in base64."""
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: raw.decode("utf-8", "replace"), f"{key}_bytes": base64.b64encode(raw).decode("ascii")}


class EscapingFilter(logging.Filter):
    """Escapes each log record's message (not its traceback): the mount logs stored paths."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = escape(record.getMessage())
        record.args = None
        return True
