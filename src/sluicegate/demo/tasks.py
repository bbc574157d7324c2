"""The demo's tasks: index one Python file with ``ast``, then combine the indexes.

:func:`build_app` registers both tasks on an App. The producer builds its own
App on the demo's database, and the worker and its process-pool children
import :mod:`sluicegate.demo.worker_app`, which builds one from the
``SLUICEGATE_DEMO_DB`` environment variable. Both register the same task
names, so a job enqueued by one runs on the other.
"""

from __future__ import annotations

import ast
import logging
import os
from collections import Counter
from typing import Any, TypedDict, cast

from sluicegate import codec
from sluicegate.app import App
from sluicegate.errors import ConfigurationError, Fail
from sluicegate.store import JobState

logger = logging.getLogger(__name__)

#: Environment variable with the path of the demo's SQLite database file.
DB_ENV = "SLUICEGATE_DEMO_DB"

#: Queue of both demo tasks.
QUEUE = "stdlib-index"

#: Name of the task that parses one file.
INDEX_TASK = "sluicegate.demo.index_file"

#: Name of the task that combines the per-file indexes.
AGGREGATE_TASK = "sluicegate.demo.aggregate_indexes"

#: Seconds one file may take to index before its child process is killed. The slowest
#: 3.11 stdlib file, test/test_typing.py, took 0.3 s on one core of a 2-core VM.
INDEX_TIMEOUT = 30.0


class FileIndex(TypedDict):
    """Counts for one parsed file, the result of :func:`index_file`."""

    path: str
    lines: int
    functions: int
    classes: int
    imports: list[str]


class IndexTotals(TypedDict):
    """Result of the aggregation task: totals and the most imported modules.

    ``top_imports`` contains ``[module, files]`` pairs, most imported first, where
    ``files`` counts the files that import the module. ``skipped`` counts the
    job ids that had no successful result to combine.
    """

    files: int
    lines: int
    functions: int
    classes: int
    top_imports: list[list[Any]]
    skipped: int


def index_file(path: str) -> FileIndex:
    """Parse the Python file at ``path`` and count its lines, functions, classes and imports.

    Functions count ``def`` and ``async def`` at any depth, methods included.
    ``imports`` lists the top-level names of absolutely imported modules
    (``os`` for ``import os.path``), each once and sorted. Relative imports
    name the file's own package, so they are left out.

    A file that is not valid Python 3 (a syntax error, an undecodable byte, a
    null byte) or cannot be read raises ``Fail``, because another attempt
    would fail the same way.
    """
    try:
        with open(path, "rb") as file:
            source = file.read()
    except OSError as exc:
        raise Fail(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        tree = ast.parse(source, filename=path)
    except SyntaxError as exc:
        where = f" (line {exc.lineno})" if exc.lineno else ""  # An encoding error has line 0.
        raise Fail(f"{type(exc).__name__}: {exc.msg}{where}") from exc
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError: null bytes in the source (Python 3.11; 3.12 raises SyntaxError).
        # RecursionError: nesting too deep for the parser.
        raise Fail(f"{type(exc).__name__}: {exc}") from exc
    functions = 0
    classes = 0
    imports: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            functions += 1
        elif isinstance(node, ast.ClassDef):
            classes += 1
        elif isinstance(node, ast.Import):
            imports.update(alias.name.partition(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imports.add(node.module.partition(".")[0])
    return FileIndex(
        path=path,
        lines=len(source.splitlines()),
        functions=functions,
        classes=classes,
        imports=sorted(imports),
    )


def aggregate_indexes(app: App, job_ids: list[str], top: int) -> IndexTotals:
    """Combine the results of finished ``index_file`` jobs read from the store.

    Jobs that did not succeed, or whose record is gone, are counted in
    ``skipped`` rather than failing the aggregation.
    """
    imports: Counter[str] = Counter()
    totals = IndexTotals(files=0, lines=0, functions=0, classes=0, top_imports=[], skipped=0)
    records = app.backend.get_jobs(job_ids)
    totals["skipped"] = len(job_ids) - len(records)
    for record in records:
        if record.state is not JobState.SUCCEEDED or record.result is None:
            totals["skipped"] += 1
            continue
        index = cast(FileIndex, codec.decode(record.result))
        totals["files"] += 1
        totals["lines"] += index["lines"]
        totals["functions"] += index["functions"]
        totals["classes"] += index["classes"]
        imports.update(index["imports"])
    totals["top_imports"] = [[name, count] for name, count in imports.most_common(top)]
    logger.info("indexes aggregated files=%d skipped=%d", totals["files"], totals["skipped"])
    return totals


def build_app(url: str) -> App:
    """Return an App on ``url`` with the demo's two tasks registered.

    Parsing is CPU-bound, so it runs in the worker's process pool.
    Aggregation only reads the store, so it runs in the thread pool, and
    reaches the store through this App, which the task closes over.
    """
    app = App(url)
    app.task(name=INDEX_TASK, queue=QUEUE, pool="process", timeout=INDEX_TIMEOUT)(index_file)

    def aggregate(job_ids: list[str], top: int = 10) -> IndexTotals:
        return aggregate_indexes(app, job_ids, top)

    app.task(name=AGGREGATE_TASK, queue=QUEUE, pool="thread", timeout=INDEX_TIMEOUT)(aggregate)
    return app


def app_from_environment() -> App:
    """Build the demo's App on the database named by ``SLUICEGATE_DEMO_DB``."""
    path = os.environ.get(DB_ENV)
    if not path:
        raise ConfigurationError(
            f"{DB_ENV} is not set; set it to the demo's database file "
            "(`sluicegate demo` sets it for the worker it starts)"
        )
    return build_app(f"sqlite:///{os.path.abspath(path)}")
