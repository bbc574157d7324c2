"""The breaker routes and the breaker metrics, served in process on a SQLite app."""

from __future__ import annotations

import datetime as dt
import re
import time

import pytest
from asgi_support import call
from fastapi import FastAPI

from sluicegate import App
from sluicegate.breaker import Breaker
from sluicegate.breaker_state import MAX_DURATION
from sluicegate.http.api import create_api
from sluicegate.http.auth import Scope

READ = {"Authorization": "Bearer r3ad"}
WRITE = {"Authorization": "Bearer wr1te"}
TOKENS = {"r3ad": Scope.READ, "wr1te": Scope.WRITE}


class Down(Exception):
    """The failure of the guarded dependency in these tests."""


@pytest.fixture
def api(app: App) -> FastAPI:
    """The API of ``app``, which declares breaker ``smtp`` with a 30 s window."""
    app.breaker("smtp", window=30, reset_timeout=10, failure_types=(Down,))
    return create_api(app, tokens=TOKENS)


def guarded_call(breaker: Breaker, fails: bool) -> None:
    """Run one call through ``breaker`` that raises ``Down`` if ``fails``."""
    try:
        with breaker:
            if fails:
                raise Down("refused")
    except Down:
        pass


def parse_time(text: str) -> float:
    assert text.endswith("Z")
    return dt.datetime.fromisoformat(text.removesuffix("Z") + "+00:00").timestamp()


def test_list_declared_and_stored(api: FastAPI, app: App) -> None:
    Breaker("legacy", app.backend).force_open(600)
    response = call(api, "GET", "/v1/breakers", headers=READ)
    assert response.status_code == 200
    legacy, smtp = response.json()
    assert legacy["name"] == "legacy"
    assert legacy["state"] == "open"
    assert legacy["declared"] is False
    assert legacy["window"] == 60.0  # The default options.
    assert legacy["reset_timeout"] == 600.0
    assert smtp == {
        "name": "smtp",
        "state": "closed",
        "declared": True,
        "failure_rate": 0.0,
        "calls": 0,
        "failures": 0,
        "window": 30.0,
        "opened_at": None,
        "next_probe_at": None,
        "reset_timeout": 10.0,
    }


def test_get_counts_calls(api: FastAPI, app: App) -> None:
    guarded_call(app.breakers["smtp"], fails=False)
    guarded_call(app.breakers["smtp"], fails=True)
    response = call(api, "GET", "/v1/breakers/smtp", headers=READ)
    assert response.status_code == 200
    body = response.json()
    assert body["calls"] == 2
    assert body["failures"] == 1
    assert body["failure_rate"] == 0.5
    assert body["state"] == "closed"


def test_get_unknown_is_404(api: FastAPI) -> None:
    response = call(api, "GET", "/v1/breakers/nope", headers=READ)
    assert response.status_code == 404
    assert "'nope'" in response.json()["detail"]


def test_force_open_for_duration(api: FastAPI) -> None:
    before = time.time()
    response = call(
        api, "POST", "/v1/breakers/smtp/force-open", headers=WRITE, json={"duration": 120}
    )
    assert response.status_code == 200
    body = response.json()
    assert body["state"] == "open"
    assert body["reset_timeout"] == 120.0
    opened_at = parse_time(body["opened_at"])
    assert before - 1 <= opened_at <= time.time() + 1
    assert parse_time(body["next_probe_at"]) - opened_at == pytest.approx(120, abs=0.01)
    stored = call(api, "GET", "/v1/breakers/smtp", headers=READ).json()
    assert stored["state"] == "open"


@pytest.mark.parametrize("options", [{}, {"json": {}}, {"json": {"duration": None}}])
def test_force_open_default_duration(api: FastAPI, options: dict[str, object]) -> None:
    response = call(api, "POST", "/v1/breakers/smtp/force-open", headers=WRITE, **options)
    assert response.status_code == 200
    assert response.json()["state"] == "open"
    assert response.json()["reset_timeout"] == 10.0


@pytest.mark.parametrize(
    "body",
    [
        {"duration": 0},
        {"duration": -5},
        {"duration": MAX_DURATION * 2},
        {"duration": "soon"},
        {"duration": True},
        {"duration": "60"},
        {"duration": 10, "until": "later"},
    ],
)
def test_force_open_rejects_invalid(api: FastAPI, app: App, body: dict[str, object]) -> None:
    response = call(api, "POST", "/v1/breakers/smtp/force-open", headers=WRITE, json=body)
    assert response.status_code == 422
    assert app.breakers["smtp"].state().state.value == "closed"


def test_reset_closes(api: FastAPI, app: App) -> None:
    app.breakers["smtp"].force_open(600)
    response = call(api, "POST", "/v1/breakers/smtp/reset", headers=WRITE)
    assert response.status_code == 200
    assert response.json()["state"] == "closed"
    assert response.json()["opened_at"] is None
    assert app.breakers["smtp"].state().state.value == "closed"


@pytest.mark.parametrize("action", ["reset", "force-open"])
def test_actions_on_unknown_are_404(api: FastAPI, app: App, action: str) -> None:
    response = call(api, "POST", f"/v1/breakers/ghost/{action}", headers=WRITE)
    assert response.status_code == 404
    assert app.backend.get_value("breaker:ghost") is None


def test_breaker_routes_need_scopes(api: FastAPI) -> None:
    assert call(api, "GET", "/v1/breakers").status_code == 401
    assert call(api, "GET", "/v1/breakers/smtp").status_code == 401
    assert call(api, "GET", "/v1/breakers", headers=READ).status_code == 200
    assert call(api, "GET", "/v1/breakers/smtp", headers=WRITE).status_code == 200
    for action in ("reset", "force-open"):
        url = f"/v1/breakers/smtp/{action}"
        assert call(api, "POST", url).status_code == 401
        assert call(api, "POST", url, headers=READ).status_code == 403


def test_openapi_documents_breakers(api: FastAPI) -> None:
    document = call(api, "GET", "/openapi.json").json()
    paths = document["paths"]
    assert set(paths["/v1/breakers"]) == {"get"}
    assert set(paths["/v1/breakers/{name}"]) == {"get"}
    assert set(paths["/v1/breakers/{name}/reset"]) == {"post"}
    force_open = paths["/v1/breakers/{name}/force-open"]["post"]
    assert "ForceOpenRequest" in str(force_open["requestBody"])
    assert "BreakerBody" in document["components"]["schemas"]


def metric(text: str, name: str, labels: str) -> float:
    """Return the value of the sample ``name{labels}`` in Prometheus text."""
    found = re.search(rf"^{re.escape(name)}\{{{re.escape(labels)}\}} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"no sample {name}{{{labels}}} in:\n{text}"
    return float(found.group(1))


def test_metrics_breaker_state_and_rate(api: FastAPI, app: App) -> None:
    for fails in (False, True, True, True):
        guarded_call(app.breakers["smtp"], fails)
    Breaker("legacy", app.backend).force_open(600)
    text = call(api, "GET", "/metrics", headers=READ).text
    assert metric(text, "sluicegate_breaker_state", 'breaker="smtp"') == 0
    assert metric(text, "sluicegate_breaker_failure_rate", 'breaker="smtp"') == 0.75
    assert metric(text, "sluicegate_breaker_state", 'breaker="legacy"') == 2


def test_metrics_transitions_from_store(api: FastAPI, app: App) -> None:
    # A breaker of another process, on its own clock: open, half-open, open, half-open, closed.
    now = [time.time()]
    other = Breaker(
        "smtp",
        app.backend,
        minimum_calls=1,
        reset_timeout=10,
        half_open_calls=1,
        failure_types=(Down,),
        clock=lambda: now[0],
    )
    guarded_call(other, fails=True)
    now[0] += 10
    guarded_call(other, fails=True)  # The probe fails: open again for 20 s.
    now[0] += 20
    guarded_call(other, fails=False)
    text = call(api, "GET", "/metrics", headers=READ).text
    transitions = "sluicegate_breaker_transitions_total"
    assert metric(text, transitions, 'breaker="smtp",to="open"') == 2
    assert metric(text, transitions, 'breaker="smtp",to="half_open"') == 2
    assert metric(text, transitions, 'breaker="smtp",to="closed"') == 1
    assert metric(text, "sluicegate_breaker_state", 'breaker="smtp"') == 0
    # A reset through the API is one more transition to closed, seen by the next scrape.
    other.force_open(60)
    assert call(api, "POST", "/v1/breakers/smtp/reset", headers=WRITE).status_code == 200
    text = call(api, "GET", "/metrics", headers=READ).text
    assert metric(text, transitions, 'breaker="smtp",to="open"') == 3
    assert metric(text, transitions, 'breaker="smtp",to="closed"') == 2


def test_metrics_skip_unreadable_breaker(api: FastAPI, app: App) -> None:
    assert app.backend.compare_and_set("breaker:broken", None, b'{"version": 99}')
    response = call(api, "GET", "/metrics", headers=READ)
    assert response.status_code == 200
    assert 'breaker="broken"' not in response.text
    assert metric(response.text, "sluicegate_breaker_state", 'breaker="smtp"') == 0
