"""Small real stores, written the way a run writes them but without Prefect or Dask."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from xraycore.batch import plan_batches, process_batch
from xraycore.image.pipeline import PipelineSpec
from xraycore.sources.catalog import SourceFile, list_sources
from xraycore.store import ScanStore
from xraycore.store.storage import Storage


def source_files(paths: list[Path]) -> list[SourceFile]:
    """Local files as a listing gives them: id the file name, size and mtime from disk."""
    return [
        SourceFile(uri=str(p), image_id=p.name, size=p.stat().st_size, mtime=p.stat().st_mtime)
        for p in paths
    ]


def build_store(
    url: str | Path,
    sources: str | Path | list[Path] | list[SourceFile],
    spec: PipelineSpec,
    *,
    batch_size: int,
    labels: dict[str, dict] | None = None,
    run_id: str = "test",
    compact: bool = True,
) -> ScanStore:
    """Initialise (or reopen) the store at ``url``, plan ``sources`` against the
    metadata already there, grow the arrays, process every batch (each a
    commit) and finish the run (its files compacted, a commit).

    ``sources`` is a folder (listed by :func:`xraycore.sources.catalog.list_sources`),
    a list of local paths, or a list of :class:`SourceFile`. ``compact=False``
    leaves the run unfinished, as a run killed before its end does.
    """
    url = str(url)
    store = ScanStore.open(url)
    store.initialise(spec, batch_size=batch_size)
    previous = store.read_metadata()
    if isinstance(sources, (str, Path)):
        sources = list_sources(Storage.from_url(str(sources)), previous)
    else:
        sources = [s if isinstance(s, SourceFile) else source_files([s])[0] for s in sources]
    plan = plan_batches(
        sources,
        previous,
        pipeline_hash=spec.hash,
        first_free_row=store.capacity(),
        batch_size=batch_size,
        labels=labels,
    )
    store.ensure_capacity(plan.end_row)
    for batch in plan.batches:
        process_batch(batch, store=url, spec=spec, run_id=run_id)
    if compact:
        store.finish_run(run_id)
    return store


def png_files(folder: Path, images: list[np.ndarray]) -> list[Path]:
    """``images`` written as ``scan000.png``, ``scan001.png``, ... in ``folder``."""
    import cv2

    paths = []
    for i, image in enumerate(images):
        path = Path(folder) / f"scan{i:03d}.png"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


def labelled_store(root: Path, *, n: int, size: int) -> str:
    """A store of ``n`` phantoms, the odd ones brightened ("finding_pneumonia"),
    viewed PA, AP and LL in turn (``view_position``),
    stored as they are (no enhancement, which would undo the brightness); scans
    6 and 7 of every 8 in the validation split, the rest in train. For training."""
    from xraycore.image.synth import phantom_chest
    from xraycore.train.baseline import write_splits

    src = Path(root) / "scans"
    src.mkdir(parents=True)
    images = [phantom_chest(size, seed=i) // 2 + (128 if i % 2 else 0) for i in range(n)]
    paths = png_files(src, [image.astype(np.uint8) for image in images])
    labels = {
        p.name: {
            "finding_pneumonia": bool(i % 2),
            "patient_id": str(i),
            "view_position": ("PA", "AP", "LL")[i % 3],
        }
        for i, p in enumerate(paths)
    }
    spec = PipelineSpec(size=size, enhance=(), outputs=())
    url = str(Path(root) / "store")
    store = build_store(url, paths, spec, batch_size=16, labels=labels)
    ids = store.read_metadata().column("image_id").to_pylist()
    write_splits(store, ["validation" if int(i[4:7]) % 8 >= 6 else "train" for i in ids], "split")
    return url


def findings_store(root: Path, *, n: int, size: int, seed: int = 0) -> str:
    """A store of ``n`` phantoms with planted findings
    (:func:`xraycore.image.synth.synthetic_findings`: some labels missing, some
    uncertain) in ``finding_nodule``, ``finding_basal_opacity`` and
    ``finding_cardiomegaly``; splits train, validation and test as 6:2:2 by index."""
    from xraycore.image.synth import synthetic_findings
    from xraycore.train.baseline import write_splits

    src = Path(root) / "scans"
    src.mkdir(parents=True)
    scans, _, found = synthetic_findings(n, size=size, seed=seed)
    paths = png_files(src, list(scans))
    labels = {
        p.name: {**{f"finding_{f}": found[f][i] for f in found}, "patient_id": str(i)}
        for i, p in enumerate(paths)
    }
    url = str(Path(root) / "store")
    store = build_store(
        url, paths, PipelineSpec(size=size, enhance=(), outputs=()), batch_size=16, labels=labels
    )
    ids = store.read_metadata().column("image_id").to_pylist()
    split = {0: "train", 1: "train", 2: "train", 3: "validation", 4: "test"}
    write_splits(store, [split[int(i[4:7]) % 5] for i in ids], "split")
    return url
