"""The bundled demo: index the Python standard library with a real worker.

``sluicegate demo`` runs :func:`sluicegate.demo.stdlib_index.run_demo`. It
starts a worker subprocess (:mod:`~sluicegate.demo.process`) for the App in
:mod:`~sluicegate.demo.worker_app` on a fresh SQLite database, enqueues one
:mod:`~sluicegate.demo.tasks` job per standard-library file, and shows the
progress and a summary (:mod:`~sluicegate.demo.report`).
"""
