"""The command line: every command, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from sluicegate.cli.main import cli

APP_SOURCE = """
import sluicegate

app = sluicegate.App("sqlite:///{db}")


@app.task(retries=0)
def add(a, b):
    return a + b
"""


@pytest.fixture
def app_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    module = tmp_path / "cli_app.py"
    module.write_text(textwrap.dedent(APP_SOURCE.format(db=tmp_path / "cli.db")))
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in [m for m in sys.modules if m == "cli_app"]:
        del sys.modules[name]


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args))
    return result.exit_code, result.output


def test_enqueue_then_status(app_dir: Path) -> None:
    code, output = run("enqueue", "cli_app:app", "cli_app.add", "--args", "[1, 2]")
    assert code == 0
    job_id = output.strip()
    code, output = run("status", "cli_app:app", job_id)
    assert code == 0
    assert "queued" in output
    code, output = run("status", "cli_app:app", job_id, "--json")
    assert code == 0
    assert '"state": "queued"' in output


def test_queues_lists_depth(app_dir: Path) -> None:
    run("enqueue", "cli_app:app", "cli_app.add", "--args", "[1, 2]")
    code, output = run("queues", "cli_app:app")
    assert code == 0
    assert "default" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["status", "cli_app:app", "no-such-id"], "not found"),
        (["status", "missing_module:app", "x"], "cannot import app"),
        (["status", "cli_app:nothing", "x"], "has no attribute"),
        (["status", "cli_app", "x"], "expected MODULE:ATTRIBUTE"),
        (["enqueue", "cli_app:app", "cli_app.add", "--args", "[1]"], "missing a required"),
        (["enqueue", "cli_app:app", "no.such.task"], "no task named"),
        (["enqueue", "cli_app:app", "cli_app.add", "--args", "[1"], "invalid JSON"),
        (["enqueue", "cli_app:app", "cli_app.add", "--args", "{}"], "JSON array"),
        (["dead-letters", "retry", "cli_app:app"], "--all"),
    ],
)
def test_user_mistake_is_one_line(app_dir: Path, args: list[str], message: str) -> None:
    code, output = run(*args)
    assert code != 0
    assert message in output
    assert "Traceback" not in output


def test_dead_letters_commands(app_dir: Path) -> None:
    code, output = run("dead-letters", "list", "cli_app:app")
    assert code == 0
    code, output = run("dead-letters", "retry", "cli_app:app", "--all")
    assert code == 0
    assert "0 dead letters" in output
    code, output = run("dead-letters", "purge", "cli_app:app", "--all")
    assert code == 0
    assert "0 dead letters" in output


def test_console_script_prints_no_traceback(app_dir: Path) -> None:
    script = Path(sys.executable).parent / "sluicegate"
    result = subprocess.run(
        [str(script), "status", "cli_app:app", "no-such-id"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "Error: job 'no-such-id' not found (never enqueued, or its record expired)"
    )


def test_enqueue_keeps_big_integers(app_dir: Path) -> None:
    big = 123456789012345678901234567890
    code, _ = run("enqueue", "cli_app:app", "cli_app.add", "--args", f"[{big}, 1]")
    assert code == 0
    import cli_app

    body = cli_app.app.backend.reserve(["default"], 1, 30.0, "test")[0].body
    assert str(big).encode() in body


def dead_letters_of(app_dir: Path, count: int) -> list[str]:
    """Enqueue ``count`` jobs and dead-letter them straight through the backend."""
    import cli_app

    from sluicegate.broker import Action, Settlement

    backend = cli_app.app.backend
    ids = [cli_app.add.enqueue(1, 2).id for _ in range(count)]
    _, deliveries = backend.exchange([], ["default"], count, 30.0, "cli-test")
    dead = [Settlement(d, Action.DEAD, None, reason="broken on purpose") for d in deliveries]
    backend.exchange(dead, ["default"], 0, 30.0, "cli-test")
    return ids


def test_dead_letters_list_json(app_dir: Path) -> None:
    ids = dead_letters_of(app_dir, 2)
    code, output = run("dead-letters", "list", "cli_app:app", "--json")

    assert code == 0
    rows = [json.loads(line) for line in output.splitlines()]
    assert [row["message_id"] for row in rows] == ids
    assert {row["reason"] for row in rows} == {"broken on purpose"}


def test_dead_letters_table_keeps_ids_whole(app_dir: Path) -> None:
    (job_id,) = dead_letters_of(app_dir, 1)
    code, output = run("dead-letters", "list", "cli_app:app")

    assert code == 0
    assert job_id in output.replace("\n", "").replace("│", "").replace(" ", "")


def test_dead_letters_retry_unknown_id(app_dir: Path) -> None:
    (job_id,) = dead_letters_of(app_dir, 1)
    code, output = run("dead-letters", "retry", "cli_app:app", job_id, "no-such-id")

    assert code == 1
    assert "1 dead letters put back" in output
    assert "1 of the 2 message ids were not put back" in output
    assert "not dead letters of queue default" in output


def test_dead_letters_ids_and_all_rejected(app_dir: Path) -> None:
    (job_id,) = dead_letters_of(app_dir, 1)
    code, output = run("dead-letters", "purge", "cli_app:app", job_id, "--all")

    assert code != 0
    assert "not both" in output
    assert run("dead-letters", "list", "cli_app:app", "--json")[1].count(job_id) == 1
