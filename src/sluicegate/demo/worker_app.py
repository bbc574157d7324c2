"""The demo's App for ``sluicegate worker sluicegate.demo.worker_app:app``.

Importing this module builds the App on the database file named by the
``SLUICEGATE_DEMO_DB`` environment variable, and raises
``ConfigurationError`` when it is not set. ``sluicegate demo`` sets it for
the worker it starts; the worker's process-pool children inherit it.
"""

from __future__ import annotations

from sluicegate.demo.tasks import app_from_environment

app = app_from_environment()
