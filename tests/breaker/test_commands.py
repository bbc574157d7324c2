"""``sluicegate breakers``: the table, reset and force-open."""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from sluicegate.breaker import Breaker
from sluicegate.cli.main import cli

APP_SOURCE = """
import sluicegate

app = sluicegate.App("sqlite:///{db}")
smtp = app.breaker("smtp", reset_timeout=10)
app.retry_budget("mail", ratio=0.1, window=60, min_retries=5)


@app.task(queue="mail", rate_limit="20/s", breaker="smtp")
def send(to):
    return to
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    module = tmp_path / "breaker_app.py"
    module.write_text(textwrap.dedent(APP_SOURCE.format(db=tmp_path / "cli.db")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("breaker_app", None)


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_lists_declared_breaker(app_dir: Path) -> None:
    code, output = run("breakers", "breaker_app:app")
    assert code == 0, output
    assert "smtp" in output
    assert "closed" in output


def test_force_open_then_reset(app_dir: Path) -> None:
    code, output = run("breakers", "force-open", "breaker_app:app", "smtp", "--for", "600")
    assert code == 0, output
    assert output.startswith("breaker smtp open until ")
    code, output = run("breakers", "breaker_app:app")
    assert "open" in output
    code, output = run("breakers", "reset", "breaker_app:app", "smtp")
    assert code == 0, output
    assert output == "breaker smtp closed\n"
    code, output = run("breakers", "list", "breaker_app:app")
    assert "closed" in output


def test_lists_stored_undeclared_breaker(app_dir: Path) -> None:
    from breaker_app import app

    Breaker("legacy", app.backend).force_open(60)

    code, output = run("breakers", "breaker_app:app")

    assert code == 0, output
    assert "legacy" in output
    assert "smtp" in output


def test_unknown_breaker_rejected(app_dir: Path) -> None:
    code, output = run("breakers", "force-open", "breaker_app:app", "smpt")

    assert code == 1
    assert "breaker 'smpt' not found" in output
    assert "known breakers: smtp" in output


def test_force_open_rejects_zero(app_dir: Path) -> None:
    code, output = run("breakers", "force-open", "breaker_app:app", "smtp", "--for", "0")
    assert code == 2
    assert "--for" in output


def test_lists_rate_limits_and_retry_budgets(app_dir: Path) -> None:
    from breaker_app import app  # type: ignore[import-not-found]

    budget = app.retry_budget("mail")
    budget.note_first_attempt(30)
    budget.admit_retry(0.0)

    code, output = run("breakers", "breaker_app:app")

    assert code == 0, output
    assert "task:breaker_app.send" in output
    assert "20/s" in output
    budget_row = next(line for line in output.splitlines() if "mail" in line)
    assert "10%" in budget_row
    assert "60s" in budget_row
    assert " 30 " in budget_row


@pytest.mark.parametrize(
    "stored",
    [
        b"garbage{",
        b'{"version": 1, "phase": "open", "retry_at": null}',
    ],
)
def test_reset_replaces_unreadable_state(app_dir: Path, stored: bytes) -> None:
    from breaker_app import app

    app.backend.compare_and_set("breaker:smtp", None, stored)

    listed, listing = run("breakers", "breaker_app:app")
    code, output = run("breakers", "reset", "breaker_app:app", "smtp")

    assert listed == 0, listing
    assert "unreadable" in listing
    assert code == 0, output
    assert app.breaker("smtp").state().state.value == "closed"
