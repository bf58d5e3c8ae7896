"""Exit codes of `xray` commands that read a table and end (issue 34).

Builds a store of the real scans (`xray run`, `xray split`), then runs each
command many times, ``--jobs`` at a time (the abort needs busy cores), and
counts each exit code and each stderr holding ``terminate called``:

- `xray train STORE --target Pneumonia --split test`, refused (exit 2: the store
  has no labels), ``--train-n`` times;
- `xray inspect`, `xray log`, `xray verify` (exit 0), `xray classify` with a
  model that does not exist (refused, exit 2) and a no-op `xray run --wait` of
  the same source into the store (exit 0), ``--n`` times each.

With ``--baseline``, each command also runs as the command line ended before
(typer's app, then the interpreter's own exit and finalization), in the same run.
`xray run` and `xray classify` use the local Prefect server (started once, reused).

    .venv/bin/python benchmarks/bench_exits.py [--n 100] [--train-n 300] [--jobs 2] [--baseline]
"""

from __future__ import annotations

import argparse
import collections
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
REAL = ROOT.parent / "shared" / "data" / "chestxray8"
ENTRIES = {
    "main": [sys.executable, "-m", "xray_cli"],
    "before": [
        sys.executable,
        "-c",
        "import sys\nfrom xray_cli.main import app\napp(sys.argv[1:])\n",
    ],
}


def _commands(store: str, folder: Path) -> dict[str, tuple[list[str], int]]:
    """Each command with the exit code that is its own."""
    return {
        "train refused": (
            ["train", store, "--target", "Pneumonia", "--out", str(folder / "m.onnx")]
            + ["--split", "test"],
            2,
        ),
        "inspect": (["inspect", store], 0),
        "log": (["log", store], 0),
        "verify": (["verify", store], 0),
        "classify refused": (["classify", store, "--model", str(folder / "none.onnx")], 2),
        # --wait: two runs at a time into one store, the second waits for the lease.
        "run no-op": (["run", str(REAL), "--store", store, "--wait"], 0),
    }


def _build(folder: Path) -> str:
    store = str(folder / "store")
    for args in (["run", str(REAL), "--store", store], ["split", store]):
        out = subprocess.run([*ENTRIES["main"], *args], capture_output=True, text=True, cwd=ROOT)
        if out.returncode != 0:
            raise SystemExit(f"xray {' '.join(args)} failed:\n{out.stdout}{out.stderr}")
    return store


def _once(entry: str, args: list[str]) -> tuple[int, bool, float]:
    t0 = time.perf_counter()
    out = subprocess.run(
        [*ENTRIES[entry], *args], capture_output=True, text=True, cwd=ROOT, timeout=600
    )
    return out.returncode, "terminate called" in out.stderr, time.perf_counter() - t0


def _stress(
    entry: str, args: list[str], runs: int, jobs: int
) -> tuple[collections.Counter, int, float]:
    """Exit codes, stderrs with ``terminate called`` and the median seconds of ``runs`` runs."""
    with ThreadPoolExecutor(jobs) as pool:
        results = list(pool.map(lambda _: _once(entry, args), range(runs)))
    codes = collections.Counter(code for code, _, _ in results)
    return codes, sum(t for _, t, _ in results), statistics.median(s for _, _, s in results)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=100, help="runs of each command")
    parser.add_argument("--train-n", type=int, default=300, help="runs of the refused train")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time")
    parser.add_argument("--baseline", action="store_true", help="also end as before the fix")
    opts = parser.parse_args()
    if not any(REAL.glob("*.png")):
        raise SystemExit(f"the real scans are not in {REAL}")
    entries = ["main", "before"] if opts.baseline else ["main"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        store = _build(folder)
        scans = len(list(REAL.glob("*.png")))
        print(f"xray exits: a store of {scans} real scans, {opts.jobs} at a time")
        header = f"{'command':<17}{'ending':<8}{'runs':>6}  {'exit codes':<22}"
        print(f"{header}{'terminate':>10}{'median s':>10}")
        for name, (args, own) in _commands(store, folder).items():
            runs = opts.train_n if name == "train refused" else opts.n
            for entry in entries:
                codes, aborted, median = _stress(entry, args, runs, opts.jobs)
                shown = ", ".join(f"{c}: {k}" for c, k in sorted(codes.items()))
                flag = "" if set(codes) == {own} else f"  (own code {own})"
                print(
                    f"{name:<17}{entry:<8}{runs:>6}  {shown:<22}{aborted:>10}{median:>10.2f}{flag}"
                )


if __name__ == "__main__":
    main()
