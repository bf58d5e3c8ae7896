"""Labels files in the three real layouts (ChestX-ray8, CheXpert, MIMIC-CXR):
recognised by their header, uncertain and blank labels kept, matched to inputs."""

from __future__ import annotations

import gzip

import pytest
from labels_files import CHEXPERT_HEADER, CYCLE, chexpert_rows, chexpert_store, write_csv
from stores import build_store, png_files

from xraycore.image.pipeline import PipelineSpec
from xraycore.image.synth import phantom_chest
from xraycore.sources.labels import CHEXPERT_OBSERVATIONS, label_for, read_labels

#: MIMIC-CXR's labeller table and metadata headers (columns in the release's order).
MIMIC_HEADER = [
    "subject_id",
    "study_id",
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Lung Lesion",
    "Lung Opacity",
    "No Finding",
    "Pleural Effusion",
    "Pleural Other",
    "Pneumonia",
    "Pneumothorax",
    "Support Devices",
]
MIMIC_METADATA_HEADER = [
    "dicom_id",
    "subject_id",
    "study_id",
    "PerformedProcedureStepDescription",
    "ViewPosition",
    "Rows",
    "Columns",
    "StudyDate",
    "StudyTime",
    "ProcedureCodeSequence_CodeMeaning",
    "ViewCodeSequence_CodeMeaning",
    "PatientOrientationCodeSequence_CodeMeaning",
]


def expected(value: str) -> int | None:
    return None if value == "" else int(float(value))


def test_chexpert_labels_keep_uncertain_and_blank_and_name_the_patient(tmp_path):
    rows = chexpert_rows(6)
    write_csv(tmp_path / "train.csv", CHEXPERT_HEADER, rows)
    labels = read_labels(str(tmp_path / "train.csv"))
    assert labels.layout == "chexpert" and len(labels) == 6
    for row in rows:
        entry = labels["/".join(row[0].split("/")[-3:])]
        assert entry["patient_id"] == row[0].split("/")[2]
        assert (entry["patient_gender"], entry["patient_age"], entry["view_position"]) == (
            row[1],
            int(row[2]),
            "AP",
        )
        for name, value in zip(CHEXPERT_OBSERVATIONS, row[5:], strict=True):
            column = "finding_" + name.lower().replace(" ", "_")
            assert entry[column] == expected(value), (row[0], name)
    values = {v for e in labels.values() for k, v in e.items() if k.startswith("finding_")}
    assert values == {None, 1, 0, -1}


def test_chexpert_valid_csv_without_blanks(tmp_path):
    path = tmp_path / "valid.csv"
    rows = [
        [
            "CheXpert-v1.0-small/valid/patient64541/study1/view1_frontal.jpg",
            "Male",
            "73",
            "Frontal",
            "AP",
            *(["1.0", "0.0"] * 7),
        ]
    ]
    write_csv(path, CHEXPERT_HEADER, rows)
    entry = read_labels(str(path))["patient64541/study1/view1_frontal.jpg"]
    assert entry["finding_no_finding"] == 1 and entry["finding_support_devices"] == 0


def _mimic(tmp_path, *, gz: bool = False):
    studies = [[10000032, 50414267, *CYCLE * 2], [10000032, 53189527, *(["1.0"] * 14)]]
    meta = [
        ["02aa804e-bde0afdd", 10000032, 50414267, "CHEST (PA AND LAT)", "PA", 3056, 2544],
        ["174413ec-4ec4c1f7", 10000032, 50414267, "CHEST (PA AND LAT)", "LATERAL", 3056, 2544],
        ["2a2277a9-b0ded155", 10000032, 53189527, "CHEST (PA AND LAT)", "PA", 3056, 2544],
        ["ffffffff-00000000", 10000099, 59999999, "CHEST (PORTABLE AP)", "AP", 3056, 2544],
    ]
    name = "mimic-cxr-2.0.0-{}.csv" + (".gz" if gz else "")
    write_csv(tmp_path / "plain-chexpert.csv", MIMIC_HEADER, [[*s[:2], *s[2:16]] for s in studies])
    write_csv(tmp_path / "plain-metadata.csv", MIMIC_METADATA_HEADER, [m + [""] * 5 for m in meta])
    for kind in ("chexpert", "metadata"):
        data = (tmp_path / f"plain-{kind}.csv").read_bytes()
        (tmp_path / name.format(kind)).write_bytes(gzip.compress(data) if gz else data)
    return str(tmp_path / name.format("chexpert")), studies


@pytest.mark.parametrize("gz", [False, True])
def test_mimic_labels_go_from_studies_to_their_images(tmp_path, gz):
    url, studies = _mimic(tmp_path, gz=gz)
    labels = read_labels(url)
    assert labels.layout == "mimic"
    # The unlabelled study's image has no entry; both images of the first study share its labels.
    assert sorted(labels) == ["02aa804e-bde0afdd", "174413ec-4ec4c1f7", "2a2277a9-b0ded155"]
    first = labels["02aa804e-bde0afdd"]
    assert (first["patient_id"], first["study_id"], first["view_position"]) == (
        "10000032",
        "50414267",
        "PA",
    )
    assert labels["174413ec-4ec4c1f7"]["view_position"] == "LATERAL"
    for name, value in zip(MIMIC_HEADER[2:], studies[0][2:16], strict=True):
        column = "finding_" + name.lower().replace(" ", "_")
        assert first[column] == expected(value), name
        assert labels["2a2277a9-b0ded155"][column] == 1


def test_mimic_labels_without_their_metadata_file(tmp_path):
    url, _ = _mimic(tmp_path)
    (tmp_path / "mimic-cxr-2.0.0-metadata.csv").unlink()
    with pytest.raises(
        ValueError, match=r"need their metadata file: .*metadata.csv does not exist"
    ):
        read_labels(url)
    with pytest.raises(
        ValueError, match="is MIMIC-CXR's metadata .* give mimic-cxr-2.0.0-chexpert"
    ):
        read_labels(str(tmp_path / "plain-metadata.csv"))


def test_an_unknown_layout_names_the_three_expected(tmp_path):
    write_csv(tmp_path / "mine.csv", ["file", "label"], [["a.png", "1"]])
    with pytest.raises(ValueError) as err:
        read_labels(str(tmp_path / "mine.csv"))
    message = str(err.value)
    assert "\n" not in message and "has columns ['file', 'label']" in message
    for name in ("Data_Entry_2017.csv", "CheXpert train.csv", "mimic-cxr-2.0.0-chexpert.csv"):
        assert name in message


def test_a_value_that_is_no_label_is_refused(tmp_path):
    rows = chexpert_rows(1)
    rows[0][7] = "2.0"
    write_csv(tmp_path / "train.csv", CHEXPERT_HEADER, rows)
    with pytest.raises(ValueError, match=r"'Cardiomegaly' holds 2.0; expected 1, 0, -1 or blank"):
        read_labels(str(tmp_path / "train.csv"))


def test_inputs_find_their_labels_by_path_tail_or_stem():
    labels = {
        "00000001_000.png": {"a": 1},
        "patient00001/study1/view1_frontal.jpg": {"b": 1},
        "02aa804e-bde0afdd": {"c": 1},
    }
    assert label_for(labels, "images_001/images/00000001_000.png") == {"a": 1}
    assert label_for(labels, "00000001_000.png#2") == {"a": 1}  # a frame: its file's labels
    for source in ("CheXpert-v1.0-small/train/", "train/", ""):
        assert label_for(labels, f"{source}patient00001/study1/view1_frontal.jpg") == {"b": 1}
    assert label_for(labels, "study1/view1_frontal.jpg") is None  # not the patient's
    assert label_for(labels, "files/p10/p10000032/s50414267/02aa804e-bde0afdd.jpg") == {"c": 1}


def test_a_labels_file_that_names_no_input_fails_in_one_line(tmp_path):
    write_csv(tmp_path / "train.csv", CHEXPERT_HEADER, chexpert_rows(2))
    paths = png_files(tmp_path, [phantom_chest(32, seed=0)])
    with pytest.raises(ValueError) as err:
        build_store(
            str(tmp_path / "store"),
            paths,
            PipelineSpec(size=32),
            batch_size=4,
            labels=read_labels(str(tmp_path / "train.csv")),
        )
    message = str(err.value)
    assert "\n" not in message
    assert "names none of the 1 inputs" in message and "CheXpert train.csv" in message
    assert "'patient00000/study1/view1_frontal.jpg'" in message and "'scan000.png'" in message


def test_chexpert_store_has_small_integer_findings_and_patient_splits(tmp_path):
    import pyarrow as pa

    from xraycore.store import ScanStore
    from xraycore.train.baseline import assign_splits

    url, rows = chexpert_store(tmp_path, n=8, size=32)
    table = ScanStore.open(url).read_metadata()
    assert table.schema.field("finding_cardiomegaly").type == pa.int8()
    by_id = {r["image_id"]: r for r in table.to_pylist()}
    for row in rows:
        got = by_id[row[0].split("/", 1)[1]]
        assert got["patient_id"] == row[0].split("/")[2]
        assert got["finding_cardiomegaly"] == expected(row[7])
    splits = assign_splits(table, fractions=(0.5, 0.25, 0.25), seed=3)
    by_patient: dict[str, set] = {}
    for r, s in zip(table.to_pylist(), splits, strict=True):
        by_patient.setdefault(r["patient_id"], set()).add(s)
    assert all(len(s) == 1 for s in by_patient.values())  # a patient's studies stay together
