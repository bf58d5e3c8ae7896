"""``xray ARGS...`` with the store lease's TTL from XRAY_TEST_LEASE_TTL_S.

The command line has no option for it (a run keeps the flow's 120 s default);
a drill that kills a flow's host needs the lease to go stale in seconds.
"""

import os
import sys

import flows.server
import xray_cli.main

_run_flow = flows.server.run_flow


def run_flow(flow, **params):
    params.setdefault("lease_ttl_s", float(os.environ["XRAY_TEST_LEASE_TTL_S"]))
    return _run_flow(flow, **params)


if __name__ == "__main__":
    flows.server.run_flow = run_flow
    sys.argv = ["xray", *sys.argv[1:]]
    sys.exit(xray_cli.main.main())
