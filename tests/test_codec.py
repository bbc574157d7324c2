"""The codec and the message envelope: round trips that keep types, and clear rejections."""

from __future__ import annotations

import collections
import datetime as dt
import enum
import math
import uuid
import zoneinfo
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sluicegate import codec
from sluicegate.errors import DecodeError, EncodeError
from sluicegate.message import (
    decode_payload,
    decode_task_call,
    encode_payload,
    encode_task_call,
)

MAX_SIZE = 10 * 1024 * 1024


def typed(value: Any) -> Any:
    """Return a hashable form of ``value`` that records the type of every part.

    Two values have equal typed forms only if they are equal and every part
    has the same type. Floats compare by ``repr`` (so nan equals nan and -0.0
    differs from 0.0) and Decimals by ``str`` (so the exponent counts).
    """
    kind = type(value)
    if kind is float:
        return (kind, repr(value))
    if kind is Decimal:
        return (kind, str(value))
    if kind is list or kind is tuple:
        return (kind, tuple(typed(item) for item in value))
    if kind is set or kind is frozenset:
        return (kind, frozenset(typed(item) for item in value))
    if kind is dict:
        return (kind, tuple((typed(key), typed(item)) for key, item in value.items()))
    if kind is dt.datetime or kind is dt.time:
        return (kind, value.isoformat(), value.utcoffset())
    return (kind, value)


def round_trip(value: Any) -> Any:
    return codec.decode(codec.encode(value))


# -- strategies

fixed_offsets = st.builds(
    dt.timezone,
    st.timedeltas(
        min_value=dt.timedelta(hours=-23, minutes=-59),
        max_value=dt.timedelta(hours=23, minutes=59),
    ),
)
datetimes = st.datetimes() | st.datetimes(timezones=fixed_offsets)
times = st.times() | st.times(timezones=fixed_offsets)
texts = st.text() | st.sampled_from(["", "\x00", "a\x00b", "\U0001f600", "\U00010348\x00é"])
big_ints = st.integers(min_value=2**64, max_value=2**300) | st.integers(
    min_value=-(2**300), max_value=-(2**63) - 1
)
decimals = st.decimals(allow_nan=False) | st.sampled_from(
    [Decimal("1.10"), Decimal("1.1"), Decimal("-0"), Decimal("1E+3"), Decimal("0.000")]
)

# Values usable as set members and dict keys. They exclude nan, which is not
# equal to itself, so no container holding it compares equal.
hashable_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | big_ints
    | st.floats(allow_nan=False)
    | texts
    | st.binary()
    | st.uuids()
    | decimals
    | st.dates()
    | datetimes
    | times
    | st.timedeltas()
)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.tuples(inner, inner) | st.frozensets(inner, max_size=3),
    max_leaves=6,
)
scalars = hashable_scalars
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.lists(inner, max_size=4).map(tuple)
        | st.sets(hashables, max_size=4)
        | st.frozensets(hashables, max_size=4)
        | st.dictionaries(texts, inner, max_size=4)
        | st.dictionaries(hashables, inner, max_size=4)
        | st.dictionaries(st.just(codec.TAG) | texts, inner, min_size=1, max_size=3)
    ),
    max_leaves=12,
)
non_finite = st.sampled_from([math.nan, math.inf, -math.inf])

# -- round trips


@settings(deadline=None)
@given(values)
def test_round_trip_values(value: Any) -> None:
    decoded = round_trip(value)

    assert decoded == value
    assert typed(decoded) == typed(value)


@settings(deadline=None)
@given(st.lists(values, max_size=3), st.dictionaries(texts, values, max_size=3))
def test_round_trip_task_call(args: list[Any], kwargs: dict[str, Any]) -> None:
    body = encode_task_call("job-1", "app.task", tuple(args), kwargs, MAX_SIZE)

    call = decode_task_call(body)

    assert call.job_id == "job-1"
    assert call.task == "app.task"
    assert typed(call.args) == typed(args)
    assert typed(call.kwargs) == typed(kwargs)


@settings(deadline=None)
@given(values)
def test_round_trip_payload(value: Any) -> None:
    decoded = decode_payload(encode_payload("message-1", value, MAX_SIZE))

    assert decoded == value
    assert typed(decoded) == typed(value)


@settings(deadline=None)
@given(st.lists(non_finite | st.floats(), max_size=5))
def test_round_trip_non_finite(value: list[float]) -> None:
    assert typed(round_trip(value)) == typed(value)


@pytest.mark.parametrize(
    "value",
    [
        dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        dt.datetime(2024, 1, 1, 12, 0, tzinfo=dt.timezone(dt.timedelta(hours=5, minutes=30))),
        dt.datetime(2024, 1, 1, 12, 0, 0, 1, tzinfo=dt.timezone(dt.timedelta(hours=-9))),
        dt.datetime(1, 1, 1),
        dt.date(1999, 12, 31),
        dt.time(23, 59, 59, 123456),
        dt.time(1, 0, tzinfo=dt.UTC),
        dt.timedelta(days=-1, microseconds=1),
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        Decimal("1.10"),
        Decimal("-0.00"),
        Decimal("NaN"),
        Decimal("-Infinity"),
        b"\x00\xff",
        2**64 - 1,
        2**64,
        -(2**63),
        -(2**63) - 1,
        2**200,
        math.inf,
        -math.inf,
        math.nan,
        -0.0,
        (),
        (1, (2, 3)),
        {1, "a", (2, 3)},
        frozenset({frozenset({1})}),
        {1: "int", (1, 2): "tuple", b"k": "bytes", None: "none"},
        {codec.TAG: "dt", "v": "not a datetime"},
        {"outer": {codec.TAG: 1}},
        "a\x00b\U0001f600",
        [{"deep": [(1, {2}), {codec.TAG: [b"x"]}]}],
    ],
)
def test_round_trip_case(value: Any) -> None:
    assert typed(round_trip(value)) == typed(value)


def test_decimal_keeps_exponent() -> None:
    assert str(round_trip(Decimal("1.10"))) == "1.10"


def test_datetime_naive_stays_naive() -> None:
    assert round_trip(dt.datetime(2024, 5, 1, 8, 30)).tzinfo is None


def test_datetime_zoneinfo_offset() -> None:
    berlin = dt.datetime(2024, 7, 1, 12, 0, 0, 123, tzinfo=zoneinfo.ZoneInfo("Europe/Berlin"))

    decoded = round_trip(berlin)

    assert decoded == berlin
    assert decoded.utcoffset() == dt.timedelta(hours=2)
    assert decoded.microsecond == 123


def test_int64_plain_json() -> None:
    assert codec.encode(2**63 - 1) == b"9223372036854775807"


def test_tagged_dict_not_confused() -> None:
    encoded = codec.encode({codec.TAG: "b", "v": "AA=="})

    assert round_trip({codec.TAG: "b", "v": "AA=="}) == {codec.TAG: "b", "v": "AA=="}
    assert b'"dict"' in encoded


def test_task_call_tuple_argument() -> None:
    body = encode_task_call("job-1", "app.task", ((1, 2), {3}), {"when": dt.date(2024, 1, 1)}, 1000)

    call = decode_task_call(body)

    assert call.args == [(1, 2), {3}]
    assert type(call.args[0]) is tuple
    assert call.kwargs == {"when": dt.date(2024, 1, 1)}


# -- values that cannot round-trip


class Point:
    pass


class Label(str):
    pass


class Color(enum.IntEnum):
    RED = 1


def deeply_nested(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        Point(),
        object(),
        Label("x"),
        Color.RED,
        collections.OrderedDict(a=1),
        collections.defaultdict(list),
        complex(1, 2),
        bytearray(b"x"),
        len,
        "\ud800",
        deeply_nested(300),
        deeply_nested(2000),
        10**5000,
    ],
    ids=[
        "object",
        "bare-object",
        "str-subclass",
        "int-enum",
        "ordered-dict",
        "defaultdict",
        "complex",
        "bytearray",
        "function",
        "lone-surrogate",
        "nested-300",
        "nested-2000",
        "huge-int",
    ],
)
def test_encode_rejects(value: Any) -> None:
    with pytest.raises(EncodeError):
        codec.encode(value)


@pytest.mark.parametrize(
    ("value", "path"),
    [
        ([1, Point()], "value[1]"),
        ({"k": complex(1, 1)}, "value['k']"),
        ({"k": [(1, bytearray())]}, "value['k'][0][1]"),
        ({Point(): 1}, "value key"),
        ({1, Label("x")}, "value["),
        ((Color.RED,), "value[0]"),
    ],
)
def test_encode_error_path(value: Any, path: str) -> None:
    with pytest.raises(EncodeError) as caught:
        codec.encode(value)

    assert caught.value.path.startswith(path)
    assert caught.value.path in str(caught.value)


def test_encode_error_subclass_reason() -> None:
    with pytest.raises(EncodeError) as caught:
        codec.encode(Label("x"))

    assert "subclass Label" in str(caught.value)
    assert caught.value.value_type == "Label"


def test_encode_error_is_type_error() -> None:
    with pytest.raises(TypeError):
        codec.encode(Point())


def test_task_call_arg_path() -> None:
    with pytest.raises(EncodeError) as caught:
        encode_task_call("job-1", "app.task", (1, Point()), {}, MAX_SIZE)

    assert caught.value.path == "args[1]"


def test_task_call_kwarg_path() -> None:
    with pytest.raises(EncodeError) as caught:
        encode_task_call("job-1", "app.task", (), {"when": complex(0, 1)}, MAX_SIZE)

    assert caught.value.path == "kwargs['when']"


def test_task_call_lone_surrogate() -> None:
    with pytest.raises(EncodeError):
        encode_task_call("job-1", "app.task", ("\udc80",), {}, MAX_SIZE)


def test_payload_path() -> None:
    with pytest.raises(EncodeError) as caught:
        encode_payload("message-1", {"items": [bytearray()]}, MAX_SIZE)

    assert caught.value.path == "payload['items'][0]"


# -- malformed input


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"{",
        b"[1,",
        b"\xff\xfe",
        b"nul",
        b"[" * 2000 + b"]" * 2000,
        b"[" * 600 + b"]" * 600,
    ],
    ids=[
        "empty",
        "open-brace",
        "open-list",
        "not-utf8",
        "bad-literal",
        "nested-2000",
        "nested-600",
    ],
)
def test_decode_rejects_malformed(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


@pytest.mark.parametrize(
    "data",
    [
        b'{"$t": "nope", "v": 1}',
        b'{"$t": "dt"}',
        b'{"$t": [1], "v": 1}',
        b'{"$t": {"a": 1}, "v": 1}',
        b'{"$t": 5, "v": 1}',
    ],
    ids=["unknown-tag", "missing-value", "list-tag", "object-tag", "number-tag"],
)
def test_decode_rejects_tag(data: bytes) -> None:
    with pytest.raises(DecodeError) as caught:
        codec.decode(data)

    assert "tag" in str(caught.value)


@pytest.mark.parametrize(
    "data",
    [
        b'{"$t": "dt", "v": "yesterday"}',
        b'{"$t": "dt", "v": 5}',
        b'{"$t": "date", "v": "2024-13-01"}',
        b'{"$t": "time", "v": "25:00"}',
        b'{"$t": "td", "v": [1, 2]}',
        b'{"$t": "td", "v": 5}',
        b'{"$t": "td", "v": [999999999999, 0, 0]}',
        b'{"$t": "uuid", "v": "not-a-uuid"}',
        b'{"$t": "dec", "v": "one"}',
        b'{"$t": "b", "v": "!!!"}',
        b'{"$t": "int", "v": "12a"}',
        b'{"$t": "float", "v": "1.5"}',
        b'{"$t": "tuple", "v": 5}',
        b'{"$t": "set", "v": [[1]]}',
        b'{"$t": "fset", "v": [{"a": 1}]}',
        b'{"$t": "dict", "v": [[[1], 2]]}',
        b'{"$t": "dict", "v": [[1]]}',
        b'{"$t": "dict", "v": 5}',
    ],
    ids=lambda data: data.decode(),
)
def test_decode_rejects_value(data: bytes) -> None:
    with pytest.raises(DecodeError):
        codec.decode(data)


def test_decode_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        codec.decode(b"{")


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1]",
        b'{"v": 2, "id": "a", "task": "t", "args": [], "kwargs": {}}',
        b'{"id": "a", "task": "t", "args": [], "kwargs": {}}',
        b'{"v": 1, "task": "t", "args": [], "kwargs": {}}',
        b'{"v": 1, "id": "a", "task": 5, "args": [], "kwargs": {}}',
        b'{"v": 1, "id": "a", "task": "t", "args": {}, "kwargs": {}}',
        b'{"v": 1, "id": "a", "task": "t", "args": [], "kwargs": []}',
        b'{"v": 1, "id": "a", "task": "t", "args": [{"$t": "x", "v": 1}], "kwargs": {}}',
        b'{"v": 1, "id": "a", "task": "t", "args": [{"$t": ["x"], "v": 1}], "kwargs": {}}',
    ],
    ids=[
        "not-json",
        "list",
        "version-2",
        "no-version",
        "no-id",
        "task-number",
        "args-object",
        "kwargs-list",
        "unknown-tag",
        "list-tag",
    ],
)
def test_task_call_rejects(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_task_call(body)


def test_task_call_rejects_deep() -> None:
    body = b'{"v": 1, "id": "a", "task": "t", "args": ' + b"[" * 900 + b"]" * 900 + b"}"

    with pytest.raises(DecodeError):
        decode_task_call(body)


@pytest.mark.parametrize(
    "body",
    [b"\xff", b'{"v": 1, "id": "a"}', b'{"v": 1, "id": "a", "payload": {"$t": "b", "v": 1}}'],
    ids=["not-utf8", "no-payload", "bad-bytes"],
)
def test_payload_rejects(body: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_payload(body)
