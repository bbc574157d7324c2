"""``sluicegate demo fanout`` end to end: a real server, worker and load generator."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from sluicegate.demo.fanout import social
from sluicegate.demo.fanout.graph import GraphSpec, follower_counts, generate_edges

#: Seconds the end-to-end run may take; the run's own --timeout is lower.
RUN_TIMEOUT = 90

#: Seconds the command may take to exit after SIGTERM, and again after SIGKILL.
STOP_TIMEOUT = 30

FANOUT_COMMAND = [
    sys.executable,
    "-c",
    "from sluicegate.cli.main import main; main()",
    "--log-level",
    "warning",
    "demo",
    "fanout",
]


def figure(output: str, pattern: str) -> int:
    found = re.search(pattern, output)
    assert found is not None, f"{pattern!r} not in the output:\n{output}"
    return int(found.group(1))


def run_fanout_command(args: list[str]) -> tuple[int, str]:
    """Run ``sluicegate demo fanout`` and return its exit code and output.

    On a timeout the command gets SIGTERM, on which it stops its server and
    worker, then SIGKILL, and the server and worker pids it printed get
    SIGKILL too, so no process outlives the test.
    """
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        output, _ = process.communicate(timeout=RUN_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.send_signal(signal.SIGTERM)
        try:
            output, _ = process.communicate(timeout=STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            output, _ = process.communicate(timeout=STOP_TIMEOUT)
        for pid in re.findall(r"pid (\d+)", output):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(int(pid), signal.SIGKILL)
        output += f"\n(timed out after {RUN_TIMEOUT} s)"
    return process.returncode, output


def test_graph_is_seeded_and_has_no_self_follows() -> None:
    spec = GraphSpec(users=500, seed=3)
    edges = list(generate_edges(spec))
    assert edges == list(generate_edges(spec))
    assert len(edges) == sum(follower_counts(spec))
    assert len(set(edges)) == len(edges)
    assert all(followee != follower for followee, follower in edges)


def test_deliver_twice_adds_entries_once(tmp_path: Path) -> None:
    conn = social.connect(tmp_path / "social.db")
    social.write_follows(conn, [(1, 2), (1, 3)])
    social.write_post(conn, 10, 1, "hello")
    social.mark_accepted(conn, 10)
    assert social.deliver(conn, 10, [2, 3]) == 2
    assert social.deliver(conn, 10, [2, 3]) == 0
    result = social.verify(conn)
    assert result.entries == 3
    assert result.expected == 3
    assert result.passed


def test_verify_reports_missing_entry(tmp_path: Path) -> None:
    conn = social.connect(tmp_path / "social.db")
    social.write_follows(conn, [(1, 2), (1, 3)])
    social.write_post(conn, 10, 1, "hello")
    social.mark_accepted(conn, 10)
    social.deliver(conn, 10, [2])
    result = social.verify(conn)
    assert result.missing == 1
    assert not result.passed


def test_fanout_demo_delivers_exactly_once(tmp_path: Path) -> None:
    directory = tmp_path / "run"
    returncode, output = run_fanout_command(
        [
            *FANOUT_COMMAND,
            "--users",
            "1000",
            "--max-length",
            "5",
            "--batch-size",
            "20",
            "--steps",
            "20:1,60:1",
            "--concurrency",
            "2",
            "--timeout",
            "60",
            "--dir",
            str(directory),
        ]
    )
    assert returncode == 0, output
    assert "exactly-once delivery: PASS" in output
    accepted = figure(output, r"accepted (\d+), not accepted")
    assert accepted > 0
    entries = figure(output, r"timeline entries (\d+), expected")
    expected = figure(output, r"expected (\d+), missing")
    assert entries == expected
    assert figure(output, r"duplicates (\d+)") == 0
    assert figure(output, r"503s answered (\d+)") > 0
    assert figure(output, r"client retries (\d+)") > 0

    conn = social.connect(directory / "social.db")
    result = social.verify(conn)
    assert result.passed
    assert result.accepted_posts == accepted
