"""The message envelope: what a broker carries for one job or one published payload.

A message body is JSON made by :mod:`sluicegate.codec`. A task message is::

    {"v": 1, "id": JOB_ID, "task": NAME, "args": [...], "kwargs": {...}}

and a message published on the plain queue level is::

    {"v": 1, "id": MESSAGE_ID, "payload": VALUE}

The encoded body may not exceed the app's ``max_message_size`` (1 MiB by
default); the check happens at enqueue, identically on every backend.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson

from sluicegate import codec
from sluicegate.errors import DecodeError, PayloadTooLarge

#: Envelope format version written into every message.
ENVELOPE_VERSION = 1

#: Default limit, in bytes, on an encoded message body and on an encoded result.
DEFAULT_MAX_MESSAGE_SIZE = 1024 * 1024


_id_lock = threading.Lock()
_id_last_ms = 0
_id_counter = 0
_id_prefix = ""  # The formatted milliseconds of _id_last_ms: "tttttttt-tttt".
_id_tails: list[str] = []  # Random "vrrr-rrrrrrrrrrrr" ends of ids, made in bulk.

#: Random ends made at once, from one read of the system's random source.
_TAILS_PER_READ = 512

#: Hex digits whose top two bits are the RFC 9562 variant, 10.
_VARIANT_DIGITS = "89ab"


def _forget_entropy() -> None:
    # A forked child must not reuse the random bytes its parent will use too.
    _id_tails.clear()


os.register_at_fork(after_in_child=_forget_entropy)


def _make_tails() -> list[str]:
    """Return random id ends: the RFC 9562 variant bits, then 62 random bits, in hex."""
    digits = os.urandom(8 * _TAILS_PER_READ).hex()
    # The first digit keeps two random bits under the variant bits 10: 8, 9, a or b.
    return [
        f"{_VARIANT_DIGITS[int(digits[i], 16) & 3]}{digits[i + 1 : i + 4]}-{digits[i + 4 : i + 16]}"
        for i in range(0, len(digits), 16)
    ]


def new_id() -> str:
    """Return a new time-ordered message or job id: a UUIDv7 in canonical form.

    Within one process the ids grow strictly: the 12-bit field after the
    version counts up within a millisecond (RFC 9562, method 1), so ids
    made in one call of ``enqueue_many`` sort in call order.
    """
    global _id_last_ms, _id_counter, _id_prefix
    with _id_lock:
        if not _id_tails:
            _id_tails.extend(_make_tails())
        tail = _id_tails.pop()
        millis = time.time_ns() // 1_000_000
        if millis > _id_last_ms:
            _id_last_ms, _id_counter = millis, 0
            text = f"{millis & 0xFFFF_FFFF_FFFF:012x}"
            _id_prefix = f"{text[:8]}-{text[8:]}"
        else:
            _id_counter += 1
            if _id_counter > 0xFFF:
                _id_last_ms, _id_counter = _id_last_ms + 1, 0
                text = f"{_id_last_ms & 0xFFFF_FFFF_FFFF:012x}"
                _id_prefix = f"{text[:8]}-{text[8:]}"
        return f"{_id_prefix}-7{_id_counter:03x}-{tail}"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """A message handed to a broker for enqueueing.

    ``ready_at`` and ``enqueued_at`` are Unix times in seconds.
    """

    id: str
    queue: str
    body: bytes
    priority: int
    ready_at: float
    enqueued_at: float


@dataclass(slots=True)
class Delivery:
    """One delivery of a reserved message to a worker.

    ``fence`` is the fencing token: it grows by one at each delivery of the
    message, and the broker rejects settling or extending with an older one.
    ``lease_until`` is the Unix time at which the lease expires unless extended.
    """

    message_id: str
    queue: str
    body: bytes
    fence: int
    lease_until: float
    delivery_count: int
    enqueued_at: float
    cancel_requested: bool = False


@dataclass(frozen=True, slots=True)
class TaskCall:
    """A decoded task message."""

    job_id: str
    task: str
    args: list[Any]
    kwargs: dict[str, Any]
    retries: int | None = None  # overrides the task's retries for this job
    callback_url: str | None = None  # receives the final record; see sluicegate.webhooks


def encode_task_call(
    job_id: str,
    task: str,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    max_size: int,
    retries: int | None = None,
    callback_url: str | None = None,
) -> bytes:
    """Encode a task message; raise ``EncodeError`` or ``PayloadTooLarge``."""
    envelope: dict[str, Any] = {
        "v": ENVELOPE_VERSION,
        "id": job_id,
        "task": task,
        "args": [codec.to_json(arg, f"args[{i}]") for i, arg in enumerate(args)],
        "kwargs": {key: codec.to_json(val, f"kwargs[{key!r}]") for key, val in kwargs.items()},
    }
    if retries is not None:
        envelope["retries"] = retries
    if callback_url is not None:
        envelope["callback_url"] = callback_url
    body = codec.dumps(envelope, "arguments")
    check_size("message", len(body), max_size)
    return body


def encode_payload(message_id: str, payload: Any, max_size: int) -> bytes:
    """Encode a plain-queue message; raise ``EncodeError`` or ``PayloadTooLarge``."""
    envelope = {
        "v": ENVELOPE_VERSION,
        "id": message_id,
        "payload": codec.to_json(payload, "payload"),
    }
    body = codec.dumps(envelope, "payload")
    check_size("message", len(body), max_size)
    return body


def decode_envelope(body: bytes) -> dict[str, Any]:
    """Parse a message body into its envelope dict; raise ``DecodeError`` if invalid."""
    try:
        envelope = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise DecodeError(f"invalid JSON: {exc}", body[:200]) from None
    if not isinstance(envelope, dict):
        raise DecodeError(f"envelope is a {type(envelope).__name__}, not an object", body[:200])
    if envelope.get("v") != ENVELOPE_VERSION:
        raise DecodeError(f"unsupported envelope version {envelope.get('v')!r}", body[:200])
    return envelope


def decode_task_call(body: bytes) -> TaskCall:
    """Decode a task message; raise ``DecodeError`` if it is not one."""
    envelope = decode_envelope(body)
    job_id, task = envelope.get("id"), envelope.get("task")
    args, kwargs = envelope.get("args", []), envelope.get("kwargs", {})
    if not isinstance(job_id, str) or not isinstance(task, str):
        raise DecodeError("task message lacks a string 'id' and 'task'", body[:200])
    if not isinstance(args, list) or not isinstance(kwargs, dict):
        raise DecodeError("'args' must be a list and 'kwargs' an object", body[:200])
    retries = envelope.get("retries")
    if retries is not None and (type(retries) is not int or retries < 0):
        raise DecodeError(f"'retries' must be a non-negative integer, got {retries!r}", body[:200])
    callback_url = envelope.get("callback_url")
    if callback_url is not None and not isinstance(callback_url, str):
        raise DecodeError(f"'callback_url' must be a string, got {callback_url!r}", body[:200])
    args, kwargs = codec.from_json(args), codec.from_json(kwargs)
    return TaskCall(job_id, task, args, kwargs, retries, callback_url)


def decode_payload(body: bytes) -> Any:
    """Decode the payload of a plain-queue message; raise ``DecodeError`` if invalid."""
    envelope = decode_envelope(body)
    if "payload" not in envelope:
        raise DecodeError("message has no 'payload'", body[:200])
    return codec.from_json(envelope["payload"])


def check_size(what: str, size: int, limit: int) -> None:
    """Raise ``PayloadTooLarge`` if ``size`` bytes exceed ``limit``."""
    if size > limit:
        raise PayloadTooLarge(what, size, limit)
