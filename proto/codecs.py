"""msgpack value codecs for Redis state, defined once, versioned.

Every value is a msgpack map with a ``"_v"`` schema version. ``decode`` refuses a value
written by a newer, incompatible schema instead of misreading it.
"""

from __future__ import annotations

from typing import Any

import msgpack

SCHEMA_VERSION = 1


class CodecError(ValueError):
    """A stored value cannot be decoded with this schema."""


def encode(value: dict[str, Any]) -> bytes:
    return msgpack.packb({"_v": SCHEMA_VERSION, **value}, use_bin_type=True)


def decode(raw: bytes | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        obj = msgpack.unpackb(raw, raw=False)
    except (msgpack.UnpackException, ValueError) as exc:
        raise CodecError(f"undecodable state value: {exc}") from exc
    if not isinstance(obj, dict):
        raise CodecError(f"state value is a {type(obj).__name__}, expected a map")
    version = obj.pop("_v", None)
    if version != SCHEMA_VERSION:
        raise CodecError(f"state value schema {version!r}, this code reads {SCHEMA_VERSION}")
    return obj


def pack_features(features: dict[str, Any]) -> bytes:
    """Features as used for ranking, logged with each impression (not versioned separately:
    the impression carries the model version)."""
    return msgpack.packb(features, use_bin_type=True)


def unpack_features(raw: bytes) -> dict[str, Any]:
    obj = msgpack.unpackb(raw, raw=False) if raw else {}
    return obj if isinstance(obj, dict) else {}
