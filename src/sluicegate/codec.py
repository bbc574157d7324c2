"""JSON codec that keeps Python types through a round trip, built on orjson.

Plain JSON values (``str``, ``int`` within 64 bits, finite ``float``, ``bool``,
``None``, ``list`` and ``dict`` with ``str`` keys) encode as themselves. The
other supported types encode as a tagged object ``{"$t": TAG, "v": VALUE}``
and decode back to the same type:

=============  =========  ==============================================
type           tag        value
=============  =========  ==============================================
datetime       ``dt``     ISO 8601; naive stays naive, aware keeps its
                          UTC offset (a ``ZoneInfo`` becomes a fixed
                          ``timezone`` with the same offset)
date           ``date``   ISO 8601
time           ``time``   ISO 8601
timedelta      ``td``     ``[days, seconds, microseconds]``
UUID           ``uuid``   canonical string
Decimal        ``dec``    ``str(value)``, so ``Decimal("1.10")`` keeps its
                          exponent
bytes          ``b``      base64
tuple          ``tuple``  list of items
set            ``set``    list of items; ``frozenset`` uses ``fset``
int > 64 bits  ``int``    decimal string
nan, inf       ``float``  ``"nan"``, ``"inf"`` or ``"-inf"``
dict           ``dict``   ``[[key, value], ...]`` when a key is not a
                          ``str`` (int, UUID, tuple, ...) or is ``"$t"``
=============  =========  ==============================================

Anything else (custom classes, ``bytearray``, ``complex``, functions) raises
:class:`~sluicegate.errors.EncodeError` naming the path of the value, so that
nothing is silently changed between the producer and the task.
Pickle is never used.
"""

from __future__ import annotations

import base64
import datetime as dt
import math
import re
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any, TypeVar

import orjson

from sluicegate.errors import DecodeError, EncodeError

TAG = "$t"
_INT64_MIN = -(2**63)
_UINT64_MAX = 2**64 - 1

Encoder = Callable[[Any, str], Any]


def encode(value: Any) -> bytes:
    """Encode ``value`` to JSON bytes; raise ``EncodeError`` if it cannot round-trip."""
    return dumps(to_json(value, "value"), "value")


def dumps(document: Any, path: str) -> bytes:
    """Serialize a document made of :func:`to_json` output to JSON bytes.

    Raises ``EncodeError`` naming ``path`` where orjson rejects the document:
    a ``str`` with a lone surrogate, or nesting deeper than orjson's limit
    (254 levels in orjson 3.x).
    """
    try:
        return orjson.dumps(document)
    except orjson.JSONEncodeError as exc:
        raise EncodeError(path, document, str(exc)) from None


def decode(data: bytes | str) -> Any:
    """Decode bytes made by :func:`encode`; raise ``DecodeError`` on invalid input."""
    try:
        raw = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}", _as_bytes(data)) from None
    return from_json(raw)


def to_json(value: Any, path: str) -> Any:
    """Convert ``value`` to plain JSON types, tagging the ones JSON lacks.

    ``path`` names the value in error messages, e.g. ``args[1]["when"]``.
    """
    try:
        return _to_json(value, path)
    except RecursionError:
        raise EncodeError(path, value, "nested too deeply") from None


def _to_json(value: Any, path: str) -> Any:
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return value
    if kind is int:
        if _INT64_MIN <= value <= _UINT64_MAX:
            return value
        try:
            return {TAG: "int", "v": str(value)}
        except ValueError as exc:  # More digits than sys.get_int_max_str_digits() allows.
            raise EncodeError(path, value, str(exc)) from None
    if kind is float:
        if math.isfinite(value):
            return value
        return {TAG: "float", "v": repr(value)}
    if kind is list:
        return [_to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]
    if kind is dict:
        return _dict_to_json(value, path)
    encoder = _ENCODERS.get(kind)
    if encoder is None:
        raise EncodeError(path, value, _unsupported_reason(value))
    return encoder(value, path)


def from_json(value: Any) -> Any:
    """Invert :func:`to_json` on a value parsed from JSON; raise ``DecodeError`` if invalid."""
    try:
        return _from_json(value)
    except RecursionError:
        raise DecodeError("value is nested too deeply") from None


def _from_json(value: Any) -> Any:
    kind = type(value)
    if kind is list:
        return [_from_json(item) for item in value]
    if kind is dict:
        tag = value.get(TAG)
        if tag is None:
            return {key: _from_json(item) for key, item in value.items()}
        decoder = _DECODERS.get(tag) if isinstance(tag, str) else None
        if decoder is None or "v" not in value:
            raise DecodeError(f"unknown type tag {tag!r}")
        try:
            return decoder(value["v"])
        except (ValueError, TypeError, ArithmeticError) as exc:
            raise DecodeError(f"invalid value for type tag {tag!r}: {exc}") from None
    return value


def _dict_to_json(value: dict[Any, Any], path: str) -> Any:
    if all(type(key) is str for key in value) and TAG not in value:
        return {key: _to_json(item, f"{path}[{key!r}]") for key, item in value.items()}
    pairs = [
        [_to_json(key, f"{path} key {key!r}"), _to_json(item, f"{path}[{key!r}]")]
        for key, item in value.items()
    ]
    return {TAG: "dict", "v": pairs}


def _encode_datetime(value: dt.datetime, path: str) -> Any:
    return {TAG: "dt", "v": value.isoformat()}


def _encode_items(tag: str) -> Encoder:
    def encode_items(value: Any, path: str) -> Any:
        return {TAG: tag, "v": [_to_json(item, f"{path}[{i}]") for i, item in enumerate(value)]}

    return encode_items


def _encode_timedelta(value: dt.timedelta, path: str) -> Any:
    return {TAG: "td", "v": [value.days, value.seconds, value.microseconds]}


def _encode_bytes(value: bytes, path: str) -> Any:
    return {TAG: "b", "v": base64.b64encode(value).decode("ascii")}


def _encode_decimal(value: Decimal, path: str) -> Any:
    return {TAG: "dec", "v": str(value)}


def _encode_tagged_str(tag: str) -> Encoder:
    def encode_str(value: Any, path: str) -> Any:
        return {TAG: tag, "v": value.isoformat() if hasattr(value, "isoformat") else str(value)}

    return encode_str


def _unsupported_reason(value: Any) -> str:
    if isinstance(value, str | int | float | list | dict | tuple | bytes):
        return (
            f"subclass {type(value).__qualname__} of a supported type would arrive as its "
            "base type; convert it first"
        )
    return (
        "unsupported type; pass JSON types, datetime, date, time, timedelta, UUID, "
        "Decimal, bytes, tuple, set or frozenset"
    )


def _decode_pairs(pairs: list[list[Any]]) -> dict[Any, Any]:
    return {_hashable(_from_json(key)): _from_json(item) for key, item in pairs}


def _hashable(key: Any) -> Any:
    # A tuple key decodes through _from_json as a tuple already; a list cannot be a key.
    if isinstance(key, list):
        raise TypeError("a dict key cannot be a list")
    return key


def _decode_float(text: str) -> float:
    if text not in ("nan", "inf", "-inf"):
        raise ValueError(f"expected nan, inf or -inf, got {text!r}")
    return float(text)


def _decode_timedelta(parts: list[int]) -> dt.timedelta:
    days, seconds, microseconds = parts
    return dt.timedelta(days=days, seconds=seconds, microseconds=microseconds)


# The C fromisoformat() of CPython 3.11.7 parses an offset under one second,
# which isoformat() writes as e.g. "+00:00:00.000001", as UTC. The decoders
# below restore such an offset.
_SUBSECOND_OFFSET = re.compile(r"([+-])00:00:00\.(\d{6})$")

DateOrTime = TypeVar("DateOrTime", dt.datetime, dt.time)


def _from_isoformat(parse: Callable[[str], DateOrTime]) -> Callable[[str], DateOrTime]:
    def decode(text: str) -> DateOrTime:
        value = parse(text)
        match = _SUBSECOND_OFFSET.search(text)
        if match is not None:
            offset = dt.timedelta(microseconds=int(match[2]))
            value = value.replace(tzinfo=dt.timezone(-offset if match[1] == "-" else offset))
        return value

    return decode


def _as_bytes(data: bytes | str) -> bytes:
    return data if isinstance(data, bytes) else data.encode("utf-8", "replace")


_ENCODERS: dict[type, Encoder] = {
    dt.datetime: _encode_datetime,
    dt.date: _encode_tagged_str("date"),
    dt.time: _encode_tagged_str("time"),
    dt.timedelta: _encode_timedelta,
    uuid.UUID: _encode_tagged_str("uuid"),
    Decimal: _encode_decimal,
    bytes: _encode_bytes,
    tuple: _encode_items("tuple"),
    set: _encode_items("set"),
    frozenset: _encode_items("fset"),
}

_DECODERS: dict[str, Callable[[Any], Any]] = {
    "dt": _from_isoformat(dt.datetime.fromisoformat),
    "date": dt.date.fromisoformat,
    "time": _from_isoformat(dt.time.fromisoformat),
    "td": _decode_timedelta,
    "uuid": uuid.UUID,
    "dec": Decimal,
    "b": lambda text: base64.b64decode(text, validate=True),
    "tuple": lambda items: tuple(_from_json(item) for item in items),
    "set": lambda items: {_from_json(item) for item in items},
    "fset": lambda items: frozenset(_from_json(item) for item in items),
    "int": int,
    "float": _decode_float,
    "dict": _decode_pairs,
}
