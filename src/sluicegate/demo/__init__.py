"""The bundled demo: index the Python standard library with a real worker.

``sluicegate demo`` runs :func:`sluicegate.demo.stdlib_index.run_demo`, which
starts a worker subprocess on a fresh SQLite database, enqueues one
:mod:`~sluicegate.demo.tasks` job per standard-library file and shows the
progress and a summary.
"""
