"""The fan-out demo: a small social app that delivers each post to its author's followers.

``sluicegate demo fanout`` runs :func:`sluicegate.demo.fanout.runner.run_fanout`.
It builds a seeded follower graph (:mod:`~sluicegate.demo.fanout.graph`) in
the app's own SQLite file (:mod:`~sluicegate.demo.fanout.social`), starts
``sluicegate serve`` and ``sluicegate worker`` for the App in
:mod:`~sluicegate.demo.fanout.app`, posts at rising rates through
``sluicegate.Client`` (:mod:`~sluicegate.demo.fanout.load`), and then checks
that every accepted post reached every follower's timeline exactly once.
"""
