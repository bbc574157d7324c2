"""Run the fan-out example: the same as ``sluicegate demo fanout``, with the same options.

The code lives in the installed package, under ``sluicegate.demo.fanout``,
because ``sluicegate serve`` and ``sluicegate worker`` import the App by
module name and ``examples/`` is not installed.
"""

from __future__ import annotations

from sluicegate.cli.fanout import fanout

if __name__ == "__main__":
    fanout(prog_name="run.py")
