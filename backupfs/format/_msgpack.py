"""Strict msgpack decoding shared by the format modules: bad bytes become IntegrityError."""

from __future__ import annotations

from typing import Any

import msgpack

from backupfs.errors import IntegrityError


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError) as exc:
        raise IntegrityError(f"{what} is not valid msgpack") from exc
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} has an unknown layout")
    return obj


def field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind):
        raise IntegrityError(f"{what}: field {key!r} is missing or malformed")
    return value
