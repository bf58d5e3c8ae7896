"""Rebuild ``tests/data/format3_store``, a store written by format 3's code.

Run it with the landed format-3 code first on the path (commit df88039, the
last main before format 4), never with this checkout's::

    git worktree add --detach /tmp/main3 df88039
    PYTHONPATH=/tmp/main3 .venv/bin/python tests/data/make_format3_store.py tests/data/format3_store

Six labelled scans and one that fails, a split, predictions, and a killed run's
leftover part in which p0.png was processed again and failed (the latest row
of a key is the failed one, as format 3's readers take it).
"""

from __future__ import annotations

import shutil
import sys
from datetime import UTC, datetime
from pathlib import Path


def main(out: Path) -> None:
    sys.path.insert(0, "/tmp/main3/tests")
    import cv2
    from stores import build_store

    import xraycore
    from xraycore.image.pipeline import PipelineSpec
    from xraycore.image.synth import phantom_chest
    from xraycore.store import columns, schema
    from xraycore.train.baseline import assign_splits, write_splits

    if schema.FORMAT != 3:
        raise SystemExit(f"format-3 code needed; {xraycore.__file__} is format {schema.FORMAT}")
    shutil.rmtree(out, ignore_errors=True)
    src = Path("/tmp/f3/src3")
    shutil.rmtree(src, ignore_errors=True)
    src.mkdir(parents=True)
    for i in range(6):
        cv2.imwrite(str(src / f"p{i}.png"), phantom_chest(48, seed=i, opacity=i % 2 == 1))
    (src / "bad.png").write_bytes(b"not an image")
    labels = {
        f"p{i}.png": {"finding_pneumonia": bool(i % 2), "patient_id": str(i // 2)} for i in range(6)
    }
    spec = PipelineSpec(size=32)
    store = build_store(str(out), src, spec, batch_size=4, labels=labels, run_id="main3")
    splits = assign_splits(store.read_metadata(), fractions=(0.5, 0.25, 0.25), seed=0)
    write_splits(store, splits, "split3")
    meta = store.read_metadata().to_pylist()
    now = datetime.now(UTC)
    predictions = [
        columns.prediction_row(
            image_id=r["image_id"],
            row=r["row"],
            score=0.25 + 0.1 * r["row"],
            label="healthy",
            model="m.onnx",
            model_sha256="a" * 64,
            run_id="cls3",
            classified_at=now,
        )
        for r in meta
        if r["status"] == "ok"
    ]
    store.write_predictions_part(predictions, "0000000000-aaaa-cls3")
    store.compact_predictions("cls3")
    again = {
        **meta[1],
        "status": "failed",
        "row": None,
        "checksum": None,
        "error": "OSError: killed",
        "processed_at": datetime.now(UTC),
        "run_id": "killed3",
    }
    store.write_metadata_part([again], "0000000008-killed3")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
