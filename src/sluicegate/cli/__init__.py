"""The ``sluicegate`` command line."""
