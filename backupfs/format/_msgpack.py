"""Strict msgpack decoding shared by the format modules: bad bytes become IntegrityError."""

from __future__ import annotations

from typing import Any

import msgpack

from backupfs.errors import IntegrityError


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)  # type: ignore[no-any-return]


def unpack(data: bytes, what: str, *, use_list: bool = True) -> Any:
    """Any msgpack object; every way bytes can be bad (truncation, bad UTF-8, a list used as a
    map key, which raises TypeError) becomes IntegrityError."""
    try:
        return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=use_list)
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise IntegrityError(f"{what} is not valid msgpack") from exc


def is_int(value: object) -> bool:
    """A msgpack integer; bool (an int subclass in Python) is not one."""
    return type(value) is int


def unpack_map(data: bytes, what: str) -> dict[str, Any]:
    obj = unpack(data, what)
    if not isinstance(obj, dict):
        raise IntegrityError(f"{what} has an unknown layout")
    return obj


def field(obj: dict[str, Any], key: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = obj.get(key)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise IntegrityError(f"{what}: field {key!r} is missing or malformed")
    return value
