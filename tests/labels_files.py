"""Labels files in CheXpert's real layout, and a small store labelled from one."""

from __future__ import annotations

import csv
from pathlib import Path

from stores import build_store, png_files

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.sources.catalog import SourceFile
from xraycore.sources.labels import CHEXPERT_OBSERVATIONS, read_labels

#: CheXpert's train.csv header, as the file has it.
CHEXPERT_HEADER = ["Path", "Sex", "Age", "Frontal/Lateral", "AP/PA", *CHEXPERT_OBSERVATIONS]
#: Observation values of CheXpert's rows, cycled: blank, 1.0, 0.0 and -1.0 all appear.
CYCLE = ["", "1.0", "0.0", "-1.0", "", "0.0", "1.0"]


def chexpert_rows(n: int) -> list[list[str]]:
    """``n`` rows of a CheXpert train.csv: two studies per patient, every kind of value."""
    rows = []
    for i in range(n):
        path = f"CheXpert-v1.0-small/train/patient{i // 2:05d}/study{i % 2 + 1}/view1_frontal.jpg"
        values = [CYCLE[(i + k) % len(CYCLE)] for k in range(len(CHEXPERT_OBSERVATIONS))]
        rows.append([path, "Female" if i % 2 else "Male", str(40 + i), "Frontal", "AP", *values])
    return rows


def write_csv(path, header, rows) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def chexpert_store(root: Path, *, n: int, size: int) -> tuple[str, list[list[str]]]:
    """A store of ``n`` phantoms laid out as CheXpert's folders
    (``train/patient<id>/study<n>/view1_frontal.jpg`` under ``CheXpert-v1.0-small``),
    labelled from a ``train.csv`` of :func:`chexpert_rows`; its URL and the CSV's rows."""
    rows = chexpert_rows(n)
    write_csv(Path(root) / "train.csv", CHEXPERT_HEADER, rows)
    src = Path(root) / "CheXpert-v1.0-small"
    sources = []
    for i, row in enumerate(rows):
        rel = row[0].split("/", 1)[1]
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (png,) = png_files((src / rel).parent, [phantom_chest(size, seed=i)])
        png.rename(src / rel)
        stat = (src / rel).stat()
        sources.append(SourceFile(uri=str(src / rel), image_id=rel, size=stat.st_size, mtime=0.0))
    url = str(Path(root) / "store")
    build_store(
        url,
        sources,
        PipelineSpec(size=size),
        batch_size=4,
        labels=read_labels(str(Path(root) / "train.csv")),
    )
    return url, rows
