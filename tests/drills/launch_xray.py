"""``xray`` with its imports done first, held at a barrier until released.

Prints ``ready`` once the CLI, the flows, Prefect and Dask are imported, then
waits for one byte on stdin and runs ``xray ARGS...``. Two of these released
by one write each start their runs within milliseconds of each other: a
barrier, not a sleep.
"""

import sys

# The imports are the point: done before the barrier, so that the runs reach the
# store within milliseconds of each other once released.
import distributed  # noqa: F401

import flows.cluster  # noqa: F401
import flows.preprocess  # noqa: F401
import flows.server  # noqa: F401
import xray_cli.console  # noqa: F401
import xray_cli.main

if __name__ == "__main__":
    print("ready", flush=True)
    if sys.stdin.read(1) != "g":
        sys.exit("launch_xray: not released")
    sys.argv = ["xray", *sys.argv[1:]]
    sys.exit(xray_cli.main.main())
