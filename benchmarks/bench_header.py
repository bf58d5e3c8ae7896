"""What reading a DICOM's header columns adds to the batch that decodes it.

Per 1024x1024 16-bit DICOM held in memory (as a batch holds it): the header
columns with pseudonyms (:func:`xraycore.sources.header.header_columns` over
:func:`~xraycore.sources.header.read_header`), the pixel decode, and the default
pipeline on the decoded scan; the median of ``--repeat`` timings each.

    .venv/bin/python benchmarks/bench_header.py [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))


def _median_ms(fn, repeat: int) -> float:
    fn()  # warm: imports, caches
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def main() -> None:
    import numpy as np
    from dicom_files import make_dicom

    from xraycore.image.decode import decode_image
    from xraycore.image.pipeline import PipelineSpec, run_pipeline
    from xraycore.image.synth import phantom_chest
    from xraycore.sources.header import Pseudonyms, header_columns, read_header

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args()
    pixels = phantom_chest(1024, seed=1).astype(np.uint16) * 16
    header = {
        "PatientName": "DOE^JANE",
        "PatientID": "MRN0001",
        "PatientBirthDate": "19600101",
        "StudyInstanceUID": "2.25.1234",
        "SeriesInstanceUID": "2.25.5678",
        "StudyDate": "20200102",
        "ViewPosition": "PA",
        "PatientSex": "F",
        "BodyPartExamined": "CHEST",
        "PixelSpacing": [0.139, 0.139],
    }
    data = make_dicom(pixels, header=header)
    keys = Pseudonyms("benchmark-key-0123456789abcdef")
    image = decode_image(data, name="bench.dcm")
    spec = PipelineSpec()
    figures = {
        "header columns": _median_ms(lambda: header_columns(read_header(data), keys), args.repeat),
        "decode": _median_ms(lambda: decode_image(data, name="bench.dcm"), args.repeat),
        "pipeline": _median_ms(lambda: run_pipeline(image, spec), max(3, args.repeat // 10)),
    }
    print(f"per 1024x1024 16-bit DICOM ({len(data) / 1e6:.1f} MB), median ms:")
    for name, ms in figures.items():
        print(f"  {name:<15} {ms:8.2f}")
    share = figures["header columns"] / (figures["decode"] + figures["pipeline"])
    print(f"  header columns / (decode + pipeline): {100 * share:.2f}%")


if __name__ == "__main__":
    main()
