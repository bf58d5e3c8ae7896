"""The DICOM header's columns: keyed pseudonyms checked against HMAC-SHA-256 itself,
ages and dates reduced as Safe Harbor asks, code strings only, and nothing else of
the header in what leaves the module (or in a decoding error's text)."""

from __future__ import annotations

import hashlib
import hmac
import warnings

import numpy as np
import pytest
from dicom_files import make_dicom

from xraycore.image.decode import ImageDecodeError, _dicom_error, decode_image
from xraycore.sources.header import (
    KEY_VARIABLE,
    Pseudonyms,
    header_columns,
    read_header,
    read_headers,
)
from xraycore.store.columns import HEADER_COLUMNS

pytest.importorskip("pydicom")

KEY = "a-test-key-of-32-characters-long"
PHI = {
    "PatientName": "PLANTED^NAME",
    "PatientID": "MRN-PLANTED-1",
    "PatientBirthDate": "19280304",
    "AccessionNumber": "ACC-PLANTED-9",
    "InstitutionName": "PLANTED HOSPITAL",
    "ReferringPhysicianName": "DR^PLANTED",
    "StudyDate": "20190405",
    "StudyDescription": "CHEST PA PLANTED NOTE",
    "StudyInstanceUID": "2.25.1111",
    "SeriesInstanceUID": "2.25.2222",
}


def _header(**extra):
    pixels = np.arange(64, dtype=np.uint8).reshape(8, 8)
    with warnings.catch_warnings():  # pydicom warns of the invalid values some tests plant
        warnings.simplefilter("ignore")
        return read_header(make_dicom(pixels, header={**PHI, **extra}))


def _hmac(column: str, value: str, key: str = KEY) -> str:
    return hmac.new(key.encode(), f"{column}:{value}".encode(), hashlib.sha256).hexdigest()[:16]


def test_pseudonyms_are_hmac_sha256_of_the_identifier_under_the_key():
    columns = header_columns(_header(), Pseudonyms(KEY))
    assert columns["patient_id"] == _hmac("patient_id", "MRN-PLANTED-1")
    assert columns["study_id"] == _hmac("study_id", "2.25.1111")
    assert columns["series_id"] == _hmac("series_id", "2.25.2222")
    assert columns["pseudonym_key"] == Pseudonyms(KEY).key_id
    other = header_columns(_header(), Pseudonyms(KEY + "-other"))
    for column in ("patient_id", "study_id", "series_id", "pseudonym_key"):
        assert other[column] != columns[column]


def test_the_columns_hold_nothing_of_the_header_but_what_is_safe():
    columns = header_columns(_header(ViewPosition="PA", PatientSex="F"), Pseudonyms(KEY))
    assert set(columns) == {*HEADER_COLUMNS, "_identifiers"}
    assert columns["view_position"] == "PA"
    assert columns["modality"] == "DX"
    assert columns["patient_sex"] == "F"
    assert columns["study_year"] == 2019
    assert columns["patient_age"] == 90  # born 1928, studied 2019: 91, recorded as 90
    text = repr(columns)
    for value in PHI.values():
        assert value not in text
    assert "20190405" not in text and "1928" not in text


@pytest.mark.parametrize(
    "age, expected",
    [("065Y", 65), ("093Y", 90), ("089Y", 89), ("018M", 1), ("006W", 0), ("400D", 1), ("X", 60)],
)
def test_age_is_whole_years_capped_at_90(age, expected):
    # "X" is not an Age String: the age comes from the birth and study dates.
    ds = _header(PatientAge=age, PatientBirthDate="19590101")
    assert header_columns(ds, None)["patient_age"] == expected


def test_code_strings_only_free_text_is_dropped():
    ds = _header(ViewPosition="PA VIEW OF MR PLANTED", BodyPartExamined="chest")
    columns = header_columns(ds, None)
    assert columns["view_position"] is None  # not a code string: longer than 16
    assert columns["body_part"] == "CHEST"
    assert header_columns(_header(ViewPosition=None), None)["view_position"] is None


def test_without_a_key_no_identifier_is_kept_and_the_row_says_it_had_some():
    columns = header_columns(_header(), None)
    assert columns["patient_id"] is columns["study_id"] is columns["series_id"] is None
    assert columns["pseudonym_key"] is None
    assert columns["_identifiers"] is True
    bare = {k: None for k in ("PatientID", "StudyInstanceUID", "SeriesInstanceUID")}
    assert header_columns(_header(**bare), None)["_identifiers"] is False


def test_pixel_spacing_then_imager_pixel_spacing():
    assert header_columns(_header(PixelSpacing=[0.14, 0.15]), None)["pixel_spacing_mm"] == [
        0.14,
        0.15,
    ]
    ds = _header(ImagerPixelSpacing=[0.2, 0.2])
    assert header_columns(ds, None)["pixel_spacing_mm"] == [0.2, 0.2]
    assert header_columns(_header(), None)["pixel_spacing_mm"] is None


def test_the_key_is_never_shown_and_a_short_one_is_refused(monkeypatch):
    keys = Pseudonyms(KEY)
    assert KEY not in repr(keys) and KEY not in str(keys)
    with pytest.raises(ValueError, match="at least 16"):
        Pseudonyms("short")
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    assert Pseudonyms.from_environment() is None
    monkeypatch.setenv(KEY_VARIABLE, KEY)
    assert Pseudonyms.from_environment() == keys


def test_headers_read_from_their_first_bytes_and_more_when_they_are_long(tmp_path):
    pixels = np.zeros((32, 32), np.uint8)
    # A 200 kB element before PatientID: the first 64 kB end inside it.
    with warnings.catch_warnings():  # longer than LT allows: pydicom warns, and writes it
        warnings.simplefilter("ignore")
        long = make_dicom(
            pixels, header={**PHI, "ImageComments": "x" * 200_000, "ViewPosition": "AP"}
        )
    (tmp_path / "long.dcm").write_bytes(long)
    (tmp_path / "short.dcm").write_bytes(make_dicom(pixels, header={**PHI, "ViewPosition": "PA"}))
    uris = [str(tmp_path / n) for n in ("long.dcm", "short.dcm", "gone.dcm")]
    found = read_headers(uris, Pseudonyms(KEY))
    assert [f and f["view_position"] for f in found] == ["AP", "PA", None]
    assert found[0]["patient_id"] == _hmac("patient_id", "MRN-PLANTED-1")
    assert read_header(long[:65536], complete=False) is None  # cut short: read more


def test_a_decoding_error_does_not_quote_header_values():
    pixels = np.zeros((8, 8), np.uint8)
    data = make_dicom(pixels, header={**PHI, "BitsAllocated": 12, "BitsStored": 12})
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, name="scan.dcm")
    for value in PHI.values():
        assert value not in str(err.value)


def test_an_error_text_keeps_keywords_and_drops_quoted_values():
    text = _dicom_error(ValueError("Invalid value 'PLANTED^NAME' for 'PatientName', b'19280304'"))
    assert text == "Invalid value <value> for 'PatientName', <value>"


def test_every_frame_of_a_multi_frame_file_gets_its_header_columns(tmp_path, monkeypatch):
    from xraycore.batch import Batch, process_batch
    from xraycore.image.pipeline import PipelineSpec
    from xraycore.sources.catalog import list_sources
    from xraycore.store import ScanStore
    from xraycore.store.storage import Storage

    src = tmp_path / "src"
    src.mkdir()
    frames = np.stack([np.full((16, 16), 40 * k, np.uint8) for k in range(3)])
    (src / "series.dcm").write_bytes(make_dicom(frames, header={**PHI, "ViewPosition": "AP"}))
    listed = list_sources(Storage.from_url(str(src)), None)
    assert len(listed) == 3
    spec = PipelineSpec(size=16, enhance=(), outputs=())
    store = ScanStore.open(str(tmp_path / "store"))
    store.initialise(spec, batch_size=4)
    store.ensure_capacity(4)
    monkeypatch.delenv(KEY_VARIABLE, raising=False)
    bare = process_batch(Batch(0, tuple(listed)), store=store.storage.url, spec=spec, run_id="a")
    assert bare["ok"] == 3 and bare["unkeyed"] == 3  # each row's identifiers were dropped
    keyed = process_batch(
        Batch(0, tuple(listed)),
        store=store.storage.url,
        spec=spec,
        run_id="b",
        pseudonyms=Pseudonyms(KEY),
    )
    assert keyed["unkeyed"] == 0
    rows = ScanStore.open(store.storage.url).read_metadata().to_pylist()
    assert [r["frame"] for r in rows] == [0, 1, 2]
    assert {(r["patient_id"], r["view_position"]) for r in rows} == {
        (_hmac("patient_id", "MRN-PLANTED-1"), "AP")
    }
