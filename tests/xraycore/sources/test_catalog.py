"""Listing a source (a folder, one file, an S3 prefix) and reading a labels CSV."""

from __future__ import annotations

import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
from dicom_files import make_dicom

from xraycore.image.synth import phantom_chest
from xraycore.sources.catalog import list_sources, read_labels
from xraycore.store.storage import Storage

#: The ids a listing of :func:`_tree` gives, in its order.
LISTED = ["IM0001", "a.jpg", "b.png", "sub/deeper/y.JPEG", "sub/scan.dcm", "sub/x.png"]


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _tree() -> dict[str, bytes]:
    """Relative path -> bytes: images at three depths, and what a listing skips."""
    scan = _png(phantom_chest(32, seed=1))
    dicom = make_dicom(phantom_chest(32, seed=2).astype(np.uint16) * 64)
    return {
        "b.png": scan,
        "a.jpg": cv2.imencode(".jpg", phantom_chest(32, seed=3))[1].tobytes(),
        "sub/x.png": _png(phantom_chest(40, seed=4)),
        "sub/deeper/y.JPEG": cv2.imencode(".jpg", phantom_chest(36, seed=5))[1].tobytes(),
        "sub/scan.dcm": dicom,
        "IM0001": dicom,  # no extension: a DICOM by its magic bytes
        ".hidden.png": scan,  # hidden files are skipped
        "sub/.DS_Store": b"\0\0\0\1Bud1",
        "README.txt": b"not an image extension",
        "LICENSE": b"no extension and not DICOM",
        "sub/notes.csv": b"a,b\n1,2\n",
    }


def _write_tree(folder: Path) -> dict[str, bytes]:
    tree = _tree()
    for rel, data in tree.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return tree


def test_a_folder_lists_its_images_sorted_by_id_relative_to_the_root(tmp_path):
    tree = _write_tree(tmp_path / "src")
    listed = list_sources(Storage.from_url(str(tmp_path / "src")))
    assert [s.image_id for s in listed] == LISTED
    for s in listed:
        path = tmp_path / "src" / s.image_id
        assert s.uri == str(path)
        assert s.size == len(tree[s.image_id]) == path.stat().st_size
        assert s.mtime == pytest.approx(path.stat().st_mtime)


def test_a_source_that_is_one_file_lists_that_file_under_its_name(tmp_path):
    _write_tree(tmp_path / "src")
    one = tmp_path / "src" / "sub" / "x.png"
    (listed,) = list_sources(Storage.from_url(str(one)))
    assert (listed.image_id, listed.uri, listed.size) == ("x.png", str(one), one.stat().st_size)
    (dicom,) = list_sources(Storage.from_url(str(tmp_path / "src" / "IM0001")))
    assert dicom.image_id == "IM0001"


def test_a_missing_source_is_an_error_naming_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere does not exist"):
        list_sources(Storage.from_url(str(tmp_path / "nowhere")))


def test_a_bucket_prefix_lists_the_same_ids_and_sizes_as_the_folder(tmp_path, s3_server):
    tree = _write_tree(tmp_path / "src")
    bucket = Storage.from_url(f"s3://catalog-{uuid.uuid4().hex[:8]}")
    bucket.makedirs()
    prefix = bucket.child("in")
    for rel, data in tree.items():
        prefix.write_bytes_atomic(rel, data)
    local = list_sources(Storage.from_url(str(tmp_path / "src")))
    remote = list_sources(prefix)
    assert [(s.image_id, s.size) for s in remote] == [(s.image_id, s.size) for s in local]
    assert [s.uri for s in remote] == [prefix.uri(i) for i in LISTED]
    assert all(s.uri.startswith("s3://catalog-") for s in remote)
    assert all(s.mtime is not None for s in remote)  # LastModified


LABELS = (
    "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,"
    "View Position,OriginalImage[Width,Height],OriginalImagePixelSpacing[x,y]\n"
    "a.png,Cardiomegaly|Effusion,0,11,58,M,PA,1024,1024,0.14,0.14\n"
    "b.png,No Finding,1,11,58,M,PA,1024,1024,0.14,0.14\n"
    "c.png,Pleural Thickening,0,12,33,F,AP,1024,1024,0.14,0.14\n"
)


def test_labels_csv_gives_findings_and_patient_columns_by_file_name(tmp_path):
    path = tmp_path / "Data_Entry_2017.csv"
    path.write_text(LABELS)
    labels = read_labels(str(path))
    assert sorted(labels) == ["a.png", "b.png", "c.png"]
    a = labels["a.png"]
    assert a["finding_labels"] == ["Cardiomegaly", "Effusion"]
    # One bool column per finding seen anywhere in the file, "No Finding" included.
    findings = {k: v for k, v in a.items() if k.startswith("finding_") and k != "finding_labels"}
    assert findings == {
        "finding_cardiomegaly": True,
        "finding_effusion": True,
        "finding_no_finding": False,
        "finding_pleural_thickening": False,
    }
    assert labels["b.png"]["finding_labels"] == ["No Finding"]
    assert labels["b.png"]["finding_no_finding"] is True
    assert labels["c.png"]["finding_pleural_thickening"] is True
    assert (a["follow_up"], a["patient_age"]) == (0, 58)
    assert (a["patient_id"], a["patient_gender"], a["view_position"]) == ("11", "M", "PA")


def test_labels_csv_with_only_the_required_columns(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("Image Index,Finding Labels\nx.png,Hernia\n")
    assert read_labels(str(path)) == {
        "x.png": {"finding_labels": ["Hernia"], "finding_hernia": True}
    }


@pytest.mark.parametrize("missing", ["Image Index", "Finding Labels"])
def test_labels_csv_without_a_required_column_is_refused_naming_the_layouts(tmp_path, missing):
    header = [c for c in ("Image Index", "Finding Labels", "Patient ID") if c != missing]
    path = tmp_path / "labels.csv"
    path.write_text(",".join(header) + "\n" + ",".join("x" * len(header)) + "\n")
    expected = r"expected one of: Data_Entry_2017.csv \(columns 'Image Index', 'Finding Labels'\)"
    with pytest.raises(ValueError, match=expected):
        read_labels(str(path))


def test_labels_file_that_does_not_exist(tmp_path):
    with pytest.raises(ValueError, match=r"labels file .*nope\.csv does not exist"):
        read_labels(str(tmp_path / "nope.csv"))


def test_labels_file_that_is_not_a_csv(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="is not a readable CSV"):
        read_labels(str(path))
