"""A run's fixed cost: `xray run` on a store with nothing left to do, against
importing what any such tool imports (`import prefect, distributed, xraycore.store`).

Prints, in one run on this machine: the median wall time of each over
``--repeat`` alternating pairs and their ratio (goal <= 1.5), where a no-op run's
time goes (from its ``--log-format json`` events), the same no-op run with the
temporary Prefect API of earlier versions (``XRAY_PREFECT_SERVER=temporary``),
and `make run` on the real scans against the seconds the run itself reports.

The local Prefect server that `xray run` starts once lives in a temporary
PREFECT_HOME here and is stopped at the end.

    .venv/bin/python benchmarks/bench_startup.py [--repeat 5] [--no-make-run]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
REAL = ROOT.parent / "shared" / "data" / "chestxray8"


def _timed(command: list[str], env: dict[str, str], cwd: Path = ROOT) -> tuple[float, str]:
    t0 = time.perf_counter()
    out = subprocess.run(command, env=env, cwd=cwd, capture_output=True, text=True, timeout=600)
    wall = time.perf_counter() - t0
    if out.returncode != 0:
        raise SystemExit(f"{command} failed ({out.returncode}):\n{out.stdout}{out.stderr}")
    return wall, out.stdout


def _source(folder: Path) -> Path:
    if any(REAL.glob("*.png")):
        return REAL
    import cv2

    from xraycore.image.synth import phantom_chest

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(9):
        cv2.imwrite(str(folder / f"phantom_{i:02d}.png"), phantom_chest(1024, seed=i))
    return folder


def _phases(stdout: str, t0: float, wall: float) -> dict[str, float]:
    events = {}
    for line in stdout.splitlines():
        if line.startswith("{"):
            event = json.loads(line)
            events.setdefault(event["event"], event["time"] - t0)
    marks = [("start", "process start, CLI import"), ("listed", "flow import, flow run, listing")]
    marks += [("planned", "planning"), ("summary", "commit and publish")]
    out, last = {}, 0.0
    for key, what in marks:
        if key in events:
            out[what] = events[key] - last
            last = events[key]
    out["exit (events delivered, interpreter)"] = wall - last
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-make-run", action="store_true")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-startup-"))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp / "prefect-home")
    xray = str(BIN / "xray")
    try:
        source, store = _source(tmp / "source"), tmp / "store"
        first, _ = _timed([xray, "run", str(source), "--store", str(store)], env)
        print(f"first run (starts the local Prefect server, processes 9 scans): {first:.1f} s")

        noop = [xray, "run", str(source), "--store", str(store)]
        imports = [str(BIN / "python"), "-c", "import prefect, distributed, xraycore.store"]
        runs, bare = [], []
        for _ in range(args.repeat):
            runs.append(_timed(noop, env)[0])
            bare.append(_timed(imports, env)[0])
        run_s, import_s = statistics.median(runs), statistics.median(bare)
        print(f"`xray run` with nothing to do: median {run_s:.2f} s of {args.repeat} ({runs})")
        print(f"`import prefect, distributed, xraycore.store`: median {import_s:.2f} s ({bare})")
        print(f"ratio {run_s / import_s:.2f} (goal <= 1.5)")

        t0 = time.time()
        wall, out = _timed([*noop, "--log-format", "json"], env)
        print("where a no-op run's time goes:")
        for what, seconds in _phases(out, t0, wall).items():
            print(f"  {seconds:5.2f} s  {what}")

        old = {**env, "XRAY_PREFECT_SERVER": "temporary"}
        before = statistics.median(_timed(noop, old)[0] for _ in range(2))
        print(f"the same with a temporary Prefect API per run (earlier versions): {before:.2f} s")

        if not args.no_make_run:
            shutil.rmtree(ROOT / "out" / "bench-startup", ignore_errors=True)
            make = ["make", "run", "OUT=out/bench-startup"]
            wall, out = _timed(make, env)
            reported = re.search(r"done: .* in ([0-9.]+) s", out)
            seconds = float(reported.group(1)) if reported else float("nan")
            print(
                f"`make run` (installed; 9 scans): {wall:.1f} s wall, the run reports "
                f"{seconds:.1f} s: ratio {wall / seconds:.1f}"
            )
            shutil.rmtree(ROOT / "out" / "bench-startup", ignore_errors=True)
    finally:
        subprocess.run([xray, "server", "stop"], env=env, capture_output=True, timeout=60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
