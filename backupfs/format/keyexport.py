"""Key exports (`key export`/`key import`, format.md 4): the master key, still wrapped by a
password, in a form to print, store offline or type back in when `keys/` is lost.

The payload is msgpack `{"v": 1, "repo": repository id, "kdf", "ops", "mem", "salt", "nonce",
"data"}`: the wrapped fields of a key file (section 4), bound to the repository by the AEAD's
associated data. Two text forms carry it:

- plain: `BACKUPFS KEY v1 <repository id>`, the payload in base64 lines, and a line
  `checksum <first 16 hex digits of SHA-256(payload)>` that tells damage from a wrong password;
- paper (borg's paper key layout): 18 bytes a line as grouped hex, each line ending in two hex
  digits of SHA-256(line number as 2 bytes big-endian + the line's bytes), so a typo is caught
  in the line where it was made; an `id:` line gives the line count, the start of the repository
  id and a checksum of the whole.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import hashlib
import re
from typing import Any, Final

from backupfs.errors import IntegrityError, UsageError
from backupfs.format._msgpack import field, pack, unpack_map

PLAIN_HEADER: Final = "BACKUPFS KEY v1"
PAPER_HEADER: Final = "BACKUPFS PAPER KEY v1"
BASE64_LINE = 64
PAPER_LINE_BYTES = 18  # as borg: six groups of three bytes
MAX_EXPORT = 64 << 10  # an export is ~300 bytes; a larger one is not read
_WRAPPED = ("kdf", "ops", "mem", "salt", "nonce", "data")
_PAPER_LINE = re.compile(r"^\s*(\d+)\s*:\s*([0-9a-fA-F ]+?)\s*-\s*([0-9a-fA-F]{2})\s*$")
_ID_LINE = re.compile(r"^\s*id\s*:\s*(\d+)\s*/\s*([0-9a-fA-F ]+?)\s*/\s*([0-9a-fA-F ]+?)\s*-\s*([0-9a-fA-F]{2})\s*$")


@dataclasses.dataclass(frozen=True, slots=True)
class KeyExport:
    repo_id: bytes
    wrapped: dict[str, Any]  # the key file fields unwrap_master_key takes

    def payload(self) -> bytes:
        return pack({"v": 1, "repo": self.repo_id, **{k: self.wrapped[k] for k in _WRAPPED}})

    @classmethod
    def from_payload(cls, data: bytes) -> KeyExport:
        what = "key export"
        obj = unpack_map(data, what)
        if obj.get("v") != 1:
            raise IntegrityError("key export: unknown version")
        repo_id = field(obj, "repo", bytes, what)
        if len(repo_id) != 32:
            raise IntegrityError("key export: malformed repository id")
        return cls(repo_id, {k: obj.get(k) for k in _WRAPPED})

    def plain(self) -> str:
        data = self.payload()
        b64 = base64.b64encode(data).decode()
        lines = [f"{PLAIN_HEADER} {self.repo_id.hex()}"]
        lines += [b64[i : i + BASE64_LINE] for i in range(0, len(b64), BASE64_LINE)]
        lines.append(f"checksum {_sha(data)[:16]}")
        return "\n".join(lines) + "\n"

    def paper(self) -> str:
        data = self.payload()
        count = (len(data) + PAPER_LINE_BYTES - 1) // PAPER_LINE_BYTES
        repo, whole = self.repo_id.hex()[:18], _sha(data)[:12]
        id_check = _sha(f"{count}/{repo}/{whole}".encode())[:2]
        out = [
            "To restore this key: backupfs -r REPOSITORY key import --paper FILE",
            "(type the lines from 'BACKUPFS PAPER KEY' on into FILE; the two digits after each '-'",
            "check that line, so a typo is found where it was made)",
            "",
            PAPER_HEADER,
            f"id: {count} / {_grouped(repo)} / {_grouped(whole)} - {id_check}",
        ]
        for i in range(count):
            chunk = data[i * PAPER_LINE_BYTES : (i + 1) * PAPER_LINE_BYTES]
            out.append(f"{i + 1:2d}: {_grouped(chunk.hex())} - {_line_check(i + 1, chunk)}")
        return "\n".join(out) + "\n"


def parse(text: str) -> KeyExport:
    """Either form, told apart by its header; every error says which line and why (UsageError:
    the input is the user's file, not repository data)."""
    if len(text) > MAX_EXPORT:
        raise UsageError("not a key export: too large")
    if PAPER_HEADER in text:
        data = _parse_paper(text)
    elif PLAIN_HEADER in text:
        data = _parse_plain(text)
    else:
        raise UsageError(f"not a key export: no '{PLAIN_HEADER}' or '{PAPER_HEADER}' line")
    try:
        return KeyExport.from_payload(data)
    except IntegrityError as exc:
        raise UsageError(f"{exc} (the checksums matched: was it made by a newer backupfs?)") from None


def _parse_plain(text: str) -> bytes:
    lines = [line.strip() for line in text[text.index(PLAIN_HEADER) :].splitlines() if line.strip()]
    body = [line for line in lines[1:] if not line.startswith("checksum")]
    checks = [line.split()[-1] for line in lines[1:] if line.startswith("checksum")]
    try:
        data = base64.b64decode("".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("the key export is damaged: its base64 lines do not decode") from None
    if not checks:
        raise UsageError("the key export is incomplete: its checksum line is missing")
    if _sha(data)[:16] != checks[0].lower():
        raise UsageError("the key export is damaged: its checksum does not match")
    return data


def _parse_paper(text: str) -> bytes:
    lines = text[text.index(PAPER_HEADER) + len(PAPER_HEADER) :].splitlines()
    head = next((m for m in map(_ID_LINE.match, lines) if m), None)
    if head is None:
        raise UsageError("the paper key has no valid 'id:' line")
    count, repo, whole, check = int(head[1]), head[2].replace(" ", ""), head[3].replace(" ", ""), head[4].lower()
    if _sha(f"{count}/{repo}/{whole}".encode())[:2] != check:
        raise UsageError("the paper key's 'id:' line does not match its checksum (a typo in it?)")
    if not 0 < count <= MAX_EXPORT // PAPER_LINE_BYTES:
        raise UsageError("the paper key's 'id:' line gives an impossible line count")
    found: dict[int, bytes] = {}
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or _ID_LINE.match(line):
            continue
        m = _PAPER_LINE.match(line)
        if m is None:
            raise UsageError(f"paper key line {lineno} ({line.strip()!r}) is not 'N: hex - check'")
        number, hexdata = int(m[1]), m[2].replace(" ", "")
        try:
            chunk = bytes.fromhex(hexdata)
        except ValueError:
            raise UsageError(f"paper key line {number}: odd number of hex digits (a typo?)") from None
        if _line_check(number, chunk) != m[3].lower():
            raise UsageError(f"paper key line {number}: checksum mismatch (a typo in this line?)")
        found[number] = chunk
    missing = [i for i in range(1, count + 1) if i not in found]
    if missing:
        raise UsageError(f"the paper key lacks line(s) {', '.join(map(str, missing))} of {count}")
    data = b"".join(found[i] for i in range(1, count + 1))
    if _sha(data)[:12] != whole.lower():
        raise UsageError("the paper key's lines are each right but do not add up to the key (lines swapped?)")
    return data


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _line_check(number: int, chunk: bytes) -> str:
    return _sha(number.to_bytes(2, "big") + chunk)[:2]


def _grouped(hexdigits: str) -> str:
    return " ".join(hexdigits[i : i + 6] for i in range(0, len(hexdigits), 6))
