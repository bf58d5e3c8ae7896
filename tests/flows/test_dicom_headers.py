"""Hospital DICOM without a spreadsheet, through the command line a user types:
the header's patient, study and view as pseudonymised columns, patient-grouped
splits and frontal-view selection from them, and no protected health
information anywhere in the store or in the Prefect server's database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import zlib
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from commands import xray
from dicom_files import make_dicom
from onnx_models import mean_model

from xraycore.image.synth import phantom_chest
from xraycore.sources.header import KEY_VARIABLE
from xraycore.store import ScanStore

pytest.importorskip("pydicom")

ROOT = Path(__file__).resolve().parents[2]
KEY = "hospital-test-key-0123456789abcdef"
#: Studies of each of the 5 patients (2-4), and the views in turn.
STUDIES = (2, 3, 4, 2, 3)
VIEWS = ("PA", "AP", "LL")
OLD = 4  # the patient aged 93
NO_VIEW = (2, 1)  # (patient, study) whose header has no ViewPosition


def _planted(p: int, s: int) -> dict[str, str]:
    """The identifying values of patient p's study s, each unique to this test."""
    return {
        "PatientName": f"PLANTEDSURNAME{p}^GIVEN",
        "PatientID": f"PLANTEDMRN{p:05d}",
        "OtherPatientIDs": f"PLANTEDOTHER{p}",
        "PatientBirthDate": "19260708" if p == OLD else f"195{p}0311",
        "AccessionNumber": f"PLANTEDACC{p}{s}",
        "InstitutionName": "PLANTED MEMORIAL HOSPITAL",
        "ReferringPhysicianName": "PLANTEDDOCTOR^A",
        "StudyDate": f"20180{p + 1}2{s}",
        "StudyDescription": f"PLANTEDNOTE CHEST {p}",
        "StudyInstanceUID": f"2.25.90817263544{p}{s}",
        "SeriesInstanceUID": f"2.25.90817263544{p}{s}7",
    }


def _needles() -> set[str]:
    found = set()
    for p, studies in enumerate(STUDIES):
        for s in range(studies):
            found |= set(_planted(p, s).values())
    # parts a writer might split a value into, and the dates as ISO text
    found |= {"PLANTEDSURNAME", "1926-07-08", "19260708", "PLANTED MEMORIAL"}
    return found | {KEY}


def _write_hospital(folder: Path) -> dict[str, int]:
    """One DICOM per study; file name -> patient. Names say nothing of the patient."""
    folder.mkdir(parents=True)
    patients, k = {}, 0
    for p, studies in enumerate(STUDIES):
        for s in range(studies):
            header = {
                **_planted(p, s),
                "ViewPosition": None if (p, s) == NO_VIEW else VIEWS[k % 3],
                "PatientSex": "FM"[p % 2],
                "PatientAge": "093Y" if p == OLD else None,
                "BodyPartExamined": "CHEST",
                "PixelSpacing": [0.139, 0.139],
            }
            pixels = phantom_chest(96, seed=k).astype(np.uint16) * (30 + p)
            name = f"scan{k:03d}.dcm"
            (folder / name).write_bytes(make_dicom(pixels, header=header))
            patients[name] = p
            k += 1
    return patients


_xray = partial(xray, check=True)


@pytest.fixture(scope="module")
def hospital(tmp_path_factory):
    """The hospital's export, processed, split, classified and drawn, as a user would."""
    root = tmp_path_factory.mktemp("hospital")
    patients = _write_hospital(root / "export")
    store = str(root / "store")
    keyed = {KEY_VARIABLE: KEY}
    run = _xray("run", str(root / "export"), "--store", store, "--size", "64", "--workers", "1",
                env=keyed)  # fmt: skip
    _xray("split", store, "--fractions", "0.4,0.3,0.3", "--seed", "3")
    model = mean_model(root / "mean.onnx", channels=1, size=64)
    _xray("classify", store, "--model", model, "--size", "64", "--channels", "1",
          "--where", "view_position=PA,AP")  # fmt: skip
    _xray("sheet", store, "--out", str(root / "store" / "sheet-extra.png"))
    return {"root": root, "store": store, "patients": patients, "run": run, "model": model}


def _metadata(store: str) -> list[dict]:
    return ScanStore.open(store).read_metadata().to_pylist()


def test_one_pseudonym_per_patient_and_no_patient_in_two_splits(hospital):
    rows = _metadata(hospital["store"])
    assert len(rows) == sum(STUDIES) and all(r["status"] == "ok" for r in rows)
    by_patient: dict[int, set] = {}
    splits: dict[int, set] = {}
    for r in rows:
        p = hospital["patients"][r["image_id"]]
        by_patient.setdefault(p, set()).add(r["patient_id"])
        splits.setdefault(p, set()).add(r["split"])
    assert all(len(ids) == 1 and None not in ids for ids in by_patient.values())
    assert len({next(iter(ids)) for ids in by_patient.values()}) == len(STUDIES)
    assert all(len(s) == 1 for s in splits.values()), splits
    assert len({next(iter(s)) for s in splits.values()}) > 1  # not all in one split
    studies = {(r["patient_id"], r["study_id"]) for r in rows}
    assert len(studies) == sum(STUDIES)  # one study per file here, each its own id
    old = [r for r in rows if hospital["patients"][r["image_id"]] == OLD]
    assert {r["patient_age"] for r in old} == {90}
    assert all(r["study_year"] == 2018 and r["modality"] == "DX" for r in rows)
    assert all(r["pixel_spacing_mm"] == [0.139, 0.139] for r in rows)
    assert sum(r["view_position"] is None for r in rows) == 1


def _png_text(data: bytes) -> bytes:
    """The text chunks of a PNG (tEXt, zTXt decompressed, iTXt)."""
    out, i = b"", 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        kind, body = data[i + 4 : i + 8], data[i + 8 : i + 8 + length]
        if kind == b"tEXt" or kind == b"iTXt":
            out += body
        elif kind == b"zTXt":
            keyword, _, rest = body.partition(b"\0")
            out += keyword + zlib.decompress(rest[1:])
        i += 12 + length
    return out


def _store_texts(store: Path):
    """(path, text) of every file of the store: raw bytes, Parquet values as read
    through pyarrow (its pages may be compressed), PNG text chunks."""
    for path in sorted(p for p in store.rglob("*") if p.is_file()):
        data = path.read_bytes()
        yield path, data.decode("latin-1")
        if path.suffix == ".parquet":
            yield path, json.dumps(pq.read_table(path).to_pylist(), default=str)
        if path.suffix == ".png":
            yield path, _png_text(data).decode("latin-1")


def test_no_planted_value_in_any_byte_of_the_store(hospital):
    needles = _needles()
    seen = 0
    for path, text in _store_texts(Path(hospital["store"])):
        seen += 1
        found = [n for n in needles if n in text]
        assert not found, f"{path} holds {found}"
    names = {p.name for p in Path(hospital["store"]).rglob("*")}
    assert {"zarr.json", "sheet.png", "sheet-extra.png"} <= names and seen > 20
    # The scans went through: the pseudonyms are there, so the scan above reads values.
    pseudonym = _metadata(hospital["store"])[0]["patient_id"]
    assert any(pseudonym in t for _, t in _store_texts(Path(hospital["store"])))
    shown = _xray("inspect", hospital["store"]).stdout  # pseudonyms and views, counted
    assert f"patients: {len(STUDIES)}" in shown and "PA" in shown
    assert not [n for n in needles if n in shown]


def test_no_planted_value_in_the_prefect_database(hospital):
    home = Path(os.environ["PREFECT_HOME"])
    files = [p for p in home.rglob("*") if p.is_file() and ".db" in p.name]
    assert files, f"no Prefect database under {home}"

    def database() -> str:
        return "".join(p.read_bytes().decode("latin-1") for p in files)

    # Events reach the database a few seconds after the runs: wait for this run's.
    deadline = time.monotonic() + 60
    while "xray.run.committed" not in database() and time.monotonic() < deadline:
        time.sleep(1)
    text = database()
    assert hospital["store"] in text  # the run's parameters are there, and read here
    found = [n for n in _needles() if n in text]
    assert not found, f"the Prefect database holds {found}"


def test_frontal_rows_selected_by_view_and_classified(hospital):
    from xraycore.train.loader import ScanLoader

    store = ScanStore.open(hospital["store"])
    rows = store.read_metadata().to_pylist()
    frontal = sorted(r["row"] for r in rows if r["view_position"] in ("PA", "AP"))
    loader = ScanLoader(store, where={"view_position": ["PA", "AP"]}, batch_size=4)
    assert sorted(int(r) for b in loader for r in b["row"]) == frontal
    scored = store.read_predictions()
    assert sorted(scored.column("row").to_pylist()) == frontal  # classify --where


def test_another_key_gives_other_pseudonyms_and_no_key_stores_none(hospital, tmp_path):
    source = str(hospital["root"] / "export")
    other = str(tmp_path / "other")
    _xray("run", source, "--store", other, "--size", "64", "--workers", "1",
          env={KEY_VARIABLE: KEY + "-another"})  # fmt: skip
    first = {r["image_id"]: r for r in _metadata(hospital["store"])}
    second = {r["image_id"]: r for r in _metadata(other)}
    assert first.keys() == second.keys()
    for image_id, r in second.items():
        for column in ("patient_id", "study_id", "series_id"):
            assert r[column] is not None and r[column] != first[image_id][column]
    again = _xray("run", source, "--store", other, "--size", "64", "--workers", "1",
                  env={KEY_VARIABLE: KEY})  # fmt: skip
    said = [line for line in again.stdout.splitlines() if "made with key" in line]
    assert len(said) == 1 and "get other ids" in said[0], again.stdout
    bare = str(tmp_path / "bare")
    res = _xray("run", source, "--store", bare, "--size", "64", "--workers", "1",
                env={KEY_VARIABLE: ""})  # fmt: skip
    said = [line for line in res.stdout.splitlines() if "no pseudonym key" in line]
    assert len(said) == 1, res.stdout
    rows = _metadata(bare)
    assert all(r["patient_id"] is r["study_id"] is r["series_id"] is None for r in rows)
    assert {r["view_position"] for r in rows} == {"PA", "AP", "LL", None}  # the rest is kept


def _as_before(store: str, **columns) -> None:
    """Make ``store``'s metadata look written before the header columns: without
    them, and with ``columns`` (name -> pyarrow array) as an older writer typed them."""
    import pyarrow as pa

    from xraycore.store._delta import commit_info
    from xraycore.store.columns import HEADER_COLUMNS

    st = ScanStore.open(store)
    table = st.metadata.read().sort_by("image_id")
    table = table.drop_columns([c for c in HEADER_COLUMNS if c in table.column_names])
    for name, values in columns.items():
        table = table.append_column(name, pa.array(values))
    st.metadata.replace(table, commit_info("batch", "older-writer", rows=table.num_rows))


def _shards(store: str) -> dict[str, bytes]:
    images = Path(store) / "images.zarr"
    return {str(p): p.read_bytes() for p in images.rglob("*") if p.is_file()}


def test_a_store_written_before_reads_nulls_and_refresh_header_fills_them(hospital, tmp_path):
    source = str(hospital["root"] / "export")
    store = str(tmp_path / "before")
    _xray("run", source, "--store", store, "--size", "64", "--workers", "1",
          env={KEY_VARIABLE: ""})  # fmt: skip
    _as_before(store)
    rows = _metadata(store)
    assert all(r["view_position"] is None and r["patient_id"] is None for r in rows)
    pixels = _shards(store)
    res = _xray("run", source, "--store", store, "--size", "64", "--refresh-header",
                "--workers", "1", env={KEY_VARIABLE: KEY})  # fmt: skip
    assert "0 new" in res.stdout and f"header columns of {sum(STUDIES)}" in res.stdout
    after = {r["image_id"]: r for r in _metadata(store)}
    first = {r["image_id"]: r for r in _metadata(hospital["store"])}
    for image_id, r in after.items():  # the same key: the same pseudonyms as a new run's
        for column in ("patient_id", "study_id", "view_position", "patient_age"):
            assert r[column] == first[image_id][column], (image_id, column)
    assert _shards(store) == pixels  # not a pixel written
    kinds = [v.get("kind") for v in ScanStore.open(store).history()]
    assert kinds[0] == "header", kinds


def test_an_older_integer_study_id_is_refused_in_one_line_until_upgraded(hospital, tmp_path):
    source = str(hospital["root"] / "export")
    store = str(tmp_path / "mimic")
    _xray("run", source, "--store", store, "--size", "64", "--workers", "1")
    _as_before(store, study_id=list(range(sum(STUDIES))), patient_age=["058Y"] * sum(STUDIES))
    (hospital["root"] / "export" / "later.dcm").write_bytes(
        make_dicom(phantom_chest(96, seed=99).astype(np.uint16), header=_planted(0, 9))
    )
    try:
        res = subprocess.run(
            [sys.executable, "-m", "xray_cli", "run", source, "--store", store, "--size", "64",
             "--workers", "1"],
            capture_output=True, text=True, timeout=600, cwd=ROOT,
        )  # fmt: skip
        assert res.returncode == 2, res.stdout + res.stderr
        assert "study_id (int64, expected string)" in res.stderr and "xray upgrade" in res.stderr
        assert len(res.stderr.strip().splitlines()) == 1, res.stderr
        done = _xray("upgrade", store)
        assert "conformed" in done.stdout and "no pixel" in done.stdout
        rows = {r["image_id"]: r for r in _metadata(store)}
        assert rows["scan000.dcm"]["study_id"] == "0" and rows["scan000.dcm"]["patient_age"] == 58
        _xray("run", source, "--store", store, "--size", "64", "--workers", "1",
              env={KEY_VARIABLE: KEY})  # fmt: skip
        rows = {r["image_id"]: r for r in _metadata(store)}
        assert rows["later.dcm"]["status"] == "ok" and rows["later.dcm"]["patient_id"]
    finally:
        (hospital["root"] / "export" / "later.dcm").unlink()


def test_a_labels_file_wins_where_it_names_a_column(hospital, tmp_path):
    labels = tmp_path / "Data_Entry_2017.csv"
    labels.write_text(
        "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
        "View Position\n"
        "scan000.dcm,Effusion,0,777,58,M,AP\n"
    )
    store = str(tmp_path / "labelled")
    _xray("run", str(hospital["root"] / "export"), "--store", store, "--labels", str(labels),
          "--size", "64", "--workers", "1", env={KEY_VARIABLE: KEY})  # fmt: skip
    rows = {r["image_id"]: r for r in _metadata(store)}
    first = {r["image_id"]: r for r in _metadata(hospital["store"])}
    labelled = rows["scan000.dcm"]
    assert (labelled["patient_id"], labelled["view_position"], labelled["patient_age"]) == (
        "777",
        "AP",
        58,
    )
    assert labelled["study_id"] == first["scan000.dcm"]["study_id"]  # the CSV has none
    assert rows["scan001.dcm"]["patient_id"] == first["scan001.dcm"]["patient_id"]


def test_a_key_from_a_secret_block_gives_the_same_pseudonyms_and_stays_out_of_prefect(
    hospital, tmp_path, monkeypatch, prefect_server
):
    import uuid

    from prefect.blocks.system import Secret
    from test_secrets import _api_dump

    from flows.cluster import local_cluster
    from flows.preprocess import preprocess_dataset
    from flows.server import run_flow

    monkeypatch.delenv(KEY_VARIABLE, raising=False)  # the block's key alone
    name = f"pseudonyms-{uuid.uuid4().hex[:8]}"
    Secret(value=KEY).save(name)
    store = str(tmp_path / "from-block")
    run_flow(
        preprocess_dataset,
        source=str(hospital["root"] / "export"),
        store=store,
        size=64,
        cluster=local_cluster(1),
        pseudonym_key_block=name,
    )
    first = {r["image_id"]: r["patient_id"] for r in _metadata(hospital["store"])}
    assert {r["image_id"]: r["patient_id"] for r in _metadata(store)} == first
    dump = _api_dump(prefect_server)
    assert name in dump  # the block's name is a parameter; its value is not
    assert KEY not in dump
    with pytest.raises(ValueError, match="no Prefect Secret block named"):
        run_flow(preprocess_dataset, source=str(hospital["root"] / "export"), store=store,
                 size=64, pseudonym_key_block="no-such-block")  # fmt: skip
