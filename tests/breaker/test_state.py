"""The pure breaker state machine, driven with explicit times."""

from __future__ import annotations

import pytest

from sluicegate.breaker_state import (
    BreakerPolicy,
    BreakerState,
    Outcome,
    Phase,
    admit,
    failure_rate,
    make_policy,
    record,
    window_counts,
)
from sluicegate.errors import ConfigurationError

T0 = 1_700_000_000.0


def run(
    policy: BreakerPolicy, state: BreakerState, outcome: Outcome, now: float = T0
) -> BreakerState:
    """Admit one call at ``now`` and record ``outcome`` for it."""
    admission = admit(policy, state, now)
    assert admission.ticket is not None
    return record(policy, admission.state, admission.ticket, outcome, now)


def run_many(
    policy: BreakerPolicy, state: BreakerState, outcomes: list[Outcome], now: float = T0
) -> BreakerState:
    for outcome in outcomes:
        state = run(policy, state, outcome, now)
    return state


# Success, failure, and neither (an exception outside failure_types).
S, F, N = Outcome.SUCCESS, Outcome.FAILURE, Outcome.IGNORED


def test_opens_at_failure_rate() -> None:
    policy = make_policy(failure_threshold=0.5, minimum_calls=10)
    state = run_many(policy, BreakerState(), [S] * 5 + [F] * 4)
    assert state.phase is Phase.CLOSED
    state = run(policy, state, F)
    assert state.phase is Phase.OPEN
    assert state.opened_at == T0
    assert state.retry_at == T0 + 30


def test_minimum_calls_floor() -> None:
    policy = make_policy(failure_threshold=0.5, minimum_calls=10)
    state = run_many(policy, BreakerState(), [F] * 9)
    assert state.phase is Phase.CLOSED
    assert failure_rate(policy, state, T0) == 1.0
    state = run(policy, state, F)
    assert state.phase is Phase.OPEN


def test_old_buckets_leave_window() -> None:
    policy = make_policy(failure_threshold=0.5, minimum_calls=10, window=60)
    state = run_many(policy, BreakerState(), [F] * 9, now=T0)
    assert window_counts(policy, state, T0 + 30) == (9, 9)
    # Past one window the nine failures no longer count, so one more does not open it.
    state = run(policy, state, F, now=T0 + 61)
    assert window_counts(policy, state, T0 + 61) == (1, 1)
    assert state.phase is Phase.CLOSED


def test_open_rejects_until_reset_timeout() -> None:
    policy = make_policy(minimum_calls=1, reset_timeout=30)
    state = run(policy, BreakerState(), F)
    admission = admit(policy, state, T0 + 29.9)
    assert admission.ticket is None
    assert admission.retry_at == T0 + 30
    assert admit(policy, state, T0 + 30).ticket is not None


def test_half_open_limits_probes() -> None:
    policy = make_policy(minimum_calls=1, half_open_calls=2)
    state = run(policy, BreakerState(), F)
    first = admit(policy, state, T0 + 30)
    second = admit(policy, first.state, T0 + 30)
    third = admit(policy, second.state, T0 + 31)
    assert first.state.phase is Phase.HALF_OPEN
    assert first.ticket is not None and first.ticket.probe
    assert second.ticket is not None and second.ticket.probe
    assert third.ticket is None
    assert third.retry_at == T0 + 60  # The round expires one reset timeout after it began.


def test_closes_after_all_probes_succeed() -> None:
    policy = make_policy(minimum_calls=1, half_open_calls=2)
    state = run(policy, BreakerState(), F)
    state = run(policy, state, S, now=T0 + 30)
    assert state.phase is Phase.HALF_OPEN
    state = run(policy, state, S, now=T0 + 30)
    assert state.phase is Phase.CLOSED
    assert window_counts(policy, state, T0 + 30) == (0, 0)
    assert state.reset_timeout is None


def test_probe_failure_doubles_timeout_to_cap() -> None:
    policy = make_policy(minimum_calls=1, reset_timeout=30, max_reset_timeout=100)
    state = run(policy, BreakerState(), F)
    now = T0
    timeouts = []
    for _ in range(4):
        now = state.retry_at or now
        state = run(policy, state, F, now=now)
        assert state.phase is Phase.OPEN
        timeouts.append(state.reset_timeout)
    assert timeouts == [60, 100, 100, 100]
    assert state.retry_at == now + 100


def test_default_cap_is_ten_resets() -> None:
    assert make_policy(reset_timeout=30).max_reset_timeout == 300


def test_timeout_back_to_base_after_close() -> None:
    policy = make_policy(minimum_calls=1, reset_timeout=30, half_open_calls=1)
    state = run(policy, BreakerState(), F)
    state = run(policy, state, F, now=T0 + 30)
    assert state.reset_timeout == 60
    state = run(policy, state, S, now=T0 + 90)
    assert state.phase is Phase.CLOSED
    state = run(policy, state, F, now=T0 + 100)
    assert state.reset_timeout == 30


def test_ignored_probe_frees_its_slot() -> None:
    policy = make_policy(minimum_calls=1, half_open_calls=1)
    state = run(policy, BreakerState(), F)
    state = run(policy, state, N, now=T0 + 30)
    assert state.phase is Phase.HALF_OPEN
    assert state.probes_admitted == 0
    assert admit(policy, state, T0 + 30).ticket is not None


def test_lost_probe_round_restarts() -> None:
    policy = make_policy(minimum_calls=1, half_open_calls=1, reset_timeout=30)
    state = run(policy, BreakerState(), F)
    lost = admit(policy, state, T0 + 30)
    assert lost.ticket is not None
    assert admit(policy, lost.state, T0 + 59).ticket is None
    fresh = admit(policy, lost.state, T0 + 60)
    assert fresh.ticket is not None
    # The lost probe reports late, from the earlier round, and is not counted.
    late = record(policy, fresh.state, lost.ticket, Outcome.FAILURE, T0 + 61)
    assert late == fresh.state


def test_stale_closed_outcome_not_counted_while_open() -> None:
    policy = make_policy(minimum_calls=1)
    slow = admit(policy, BreakerState(), T0)
    state = run(policy, slow.state, F)
    assert slow.ticket is not None
    assert record(policy, state, slow.ticket, Outcome.SUCCESS, T0 + 1) == state


def test_ignored_outcome_counts_as_neither() -> None:
    policy = make_policy(failure_threshold=0.5, minimum_calls=2)
    state = run_many(policy, BreakerState(), [N] * 5 + [F])
    assert window_counts(policy, state, T0) == (1, 1)
    assert state.phase is Phase.CLOSED


def test_consecutive_mode_opens() -> None:
    policy = make_policy(mode="consecutive", failure_threshold=3)
    state = run_many(policy, BreakerState(), [F, F, S, F, F])
    assert state.phase is Phase.CLOSED
    assert state.consecutive_failures == 2
    state = run(policy, state, F)
    assert state.phase is Phase.OPEN


def test_consecutive_mode_ignores_minimum_calls() -> None:
    policy = make_policy(mode="consecutive", failure_threshold=2, minimum_calls=100)
    state = run_many(policy, BreakerState(), [F, F])
    assert state.phase is Phase.OPEN


def test_state_round_trips_json() -> None:
    policy = make_policy(minimum_calls=1)
    state = run_many(policy, BreakerState(), [S, F])
    assert BreakerState.decode(state.encode()) == state
    assert b'"version":1' in state.encode()


def test_state_rejects_other_version() -> None:
    with pytest.raises(ValueError, match="version 2"):
        BreakerState.decode(b'{"version": 2}')


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"failure_threshold": 0}, "failure_threshold must be a failure rate .* got 0"),
        ({"failure_threshold": 1.5}, "failure_threshold .* got 1.5"),
        ({"mode": "consecutive"}, "positive integer .* consecutive mode, got 0.5"),
        ({"mode": "consecutive", "failure_threshold": True}, "got True"),
        ({"mode": "sliding"}, "mode must be 'rate' or 'consecutive', got 'sliding'"),
        ({"minimum_calls": 0}, "minimum_calls must be a positive integer, got 0"),
        ({"half_open_calls": 1.5}, "half_open_calls must be a positive integer, got 1.5"),
        ({"window": -1}, r"window must be between 0\.01 and 3\.1536e\+07 seconds, got -1"),
        ({"window": 1e-300}, r"window must be between 0\.01 and .* seconds, got 1e-300"),
        ({"reset_timeout": 1e308}, r"reset_timeout must be between 0\.01 and .* got 1e\+308"),
        ({"reset_timeout": float("nan")}, "reset_timeout .* got nan"),
        ({"reset_timeout": 30, "max_reset_timeout": 10}, "max_reset_timeout .* got 10"),
    ],
)
def test_policy_rejects_invalid(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        make_policy(**options)  # type: ignore[arg-type]
