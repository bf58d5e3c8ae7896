"""How soon the operator sees progress on a ChestX-ray8-sized source.

Generates 112,120 small PNGs (16x16, the size of ChestX-ray8's file list, not its
pixels) and a labels CSV of as many rows, then runs ``preprocess_dataset`` on a
LocalCluster and reports, from the flow's own progress events: listing,
planning, cluster ready, the first progress update and its delay after
planning, and the whole run.

    .venv/bin/python benchmarks/bench_first_progress.py [--files 112120] [--batch-size 64]
        [--keep DIR] [--stop-after-first]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np


def make_source(folder: Path, n: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    ok, buf = cv2.imencode(".png", rng.integers(0, 255, (16, 16), dtype=np.uint8))
    data = buf.tobytes()
    rows = ["Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
            "View Position"]  # fmt: skip
    for i in range(n):
        name = f"{i // 1000:08d}_{i % 1000:03d}.png"
        path = folder / name
        if not path.exists():
            path.write_bytes(data)
        rows.append(f"{name},No Finding,{i % 1000},{i // 1000},40,F,PA")
    labels = folder.parent / "Data_Entry_2017.csv"
    labels.write_text("\n".join(rows) + "\n")
    return labels


class Stop(Exception):
    pass


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--files", type=int, default=112_120)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", type=Path, help="folder for the source (reused if present)")
    ap.add_argument("--stop-after-first", action="store_true")
    args = ap.parse_args()
    from flows.cluster import local_cluster
    from flows.preprocess import preprocess_dataset
    from flows.progress import observe
    from flows.server import prefect_api

    with tempfile.TemporaryDirectory() as tmp:
        base = args.keep or Path(tmp)
        t = time.perf_counter()
        labels = make_source(base / "src", args.files)
        print(f"# {args.files} 16x16 PNGs + labels CSV in {time.perf_counter() - t:.0f} s")
        marks: dict[str, float] = {}

        def observer(event, fields):
            if event not in marks:
                marks[event] = time.perf_counter() - start
                if event == "batch" and args.stop_after_first:
                    raise Stop

        with prefect_api():
            start = time.perf_counter()
            try:
                with observe(observer):
                    summary = preprocess_dataset(
                        source=str(base / "src"),
                        store=str(Path(tmp) / "store"),
                        labels=str(labels),
                        size=16,
                        batch_size=args.batch_size,
                        cluster=local_cluster(args.workers),
                        sheet=False,
                    )
            except Stop:
                summary = None
            total = time.perf_counter() - start
    print(
        "seconds from the flow call: "
        + ", ".join(f"{k} {v:.1f}" for k, v in marks.items() if k != "batch")
        + f", first progress {marks['batch']:.1f}"
    )
    print(f"first progress update {marks['batch'] - marks['planned']:.1f} s after planning")
    if summary:
        print(
            f"whole run {total:.0f} s: {summary['ok']} ok, {summary['failed']} failed, "
            f"{summary['batches']} batches, {summary['images_per_s']:.0f} images/s"
        )


if __name__ == "__main__":
    main()
