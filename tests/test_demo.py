"""The bundled demo: its tasks, and ``sluicegate demo`` end to end with a real worker."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from sluicegate import Fail
from sluicegate.demo.stdlib_index import find_stdlib_files
from sluicegate.demo.tasks import index_file

#: Seconds the end-to-end run may take; it takes about 10 s on 2 cores.
DEMO_TIMEOUT = 120


def sluicegate_command() -> list[str]:
    """Return the command that runs the ``sluicegate`` CLI of this interpreter."""
    script = Path(sys.executable).with_name("sluicegate")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from sluicegate.cli.main import main; main()"]


def test_index_file_counts(tmp_path: Path) -> None:
    source = tmp_path / "sample.py"
    source.write_text(
        "import os.path, sys\n"
        "from collections import abc\n"
        "from . import sibling\n"
        "\n"
        "class A:\n"
        "    def method(self): pass\n"
        "    async def coroutine(self): pass\n"
        "\n"
        "def function():\n"
        "    import json\n"
        "    class Inner: pass\n"
    )
    index = index_file(str(source))
    assert index["path"] == str(source)
    assert index["lines"] == 11
    assert index["functions"] == 3
    assert index["classes"] == 2
    assert index["imports"] == ["collections", "json", "os", "sys"]


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"print 'python 2'\n", "SyntaxError"),
        (b"# -*- coding: no-such-codec -*-\nx = 1\n", "unknown encoding"),
        (b"x = '\xff'\n", "can't decode"),
        (b"x = 1\x00\n", "null bytes"),
    ],
)
def test_index_file_fails_unparsable(tmp_path: Path, content: bytes, expected: str) -> None:
    source = tmp_path / "bad.py"
    source.write_bytes(content)
    with pytest.raises(Fail, match=expected):
        index_file(str(source))


def test_index_file_fails_missing(tmp_path: Path) -> None:
    with pytest.raises(Fail, match="cannot read"):
        index_file(str(tmp_path / "missing.py"))


def test_find_stdlib_files_skips_packages(tmp_path: Path) -> None:
    for relative in ("a.py", "pkg/b.py", "pkg/c.txt", "site-packages/d.py", "dist-packages/e.py"):
        path = tmp_path / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("")
    found = [path.relative_to(tmp_path).as_posix() for path in find_stdlib_files(tmp_path)]
    assert found == ["a.py", "pkg/b.py"]


def test_demo_rejects_existing_database(db_path: Path) -> None:
    db_path.write_bytes(b"")
    completed = subprocess.run(
        [*sluicegate_command(), "demo", "--db", str(db_path)],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    assert completed.returncode == 2, completed.stderr
    assert "exists" in completed.stderr


def test_demo_end_to_end(db_path: Path) -> None:
    completed = subprocess.run(
        [*sluicegate_command(), "demo", "--db", str(db_path), "--timeout", "100"],
        capture_output=True,
        text=True,
        timeout=DEMO_TIMEOUT,
    )
    output = completed.stdout
    assert completed.returncode == 0, f"stdout:\n{output}\nstderr:\n{completed.stderr}"

    jobs = re.search(r"^\s*jobs\s+(\d+) \((\d+) succeeded, (\d+) failed\)", output, re.MULTILINE)
    assert jobs is not None, output
    total, succeeded, failed = (int(group) for group in jobs.groups())
    assert total > 500
    assert succeeded + failed == total
    assert failed < total // 10

    assert re.search(r"^\s*retries\s+\d+$", output, re.MULTILINE), output
    assert re.search(r"^\s*dead letters\s+0$", output, re.MULTILINE), output
    assert re.search(r"queue wait\s+p50 [\d.]+ s, p99 [\d.]+ s", output), output

    modules = re.findall(r"^\s*\d+\. (\S+)\s+(\d+)$", output, re.MULTILINE)
    assert len(modules) == 10, output
    names = {name for name, _ in modules}
    assert names & {"os", "sys"}, modules

    log = re.search(r"^Worker log: (.+)$", output, re.MULTILINE)
    assert log is not None, output
    assert Path(log.group(1)).is_file()
    assert db_path.is_file()
