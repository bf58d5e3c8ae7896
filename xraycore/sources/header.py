"""What a DICOM header says of its scan, as metadata columns that identify no one.

A hospital header names the patient (name, record number, birth date), the
study (accession number, dates, institution, physicians) and the view. The
store keeps only:

- ``patient_id``, ``study_id``, ``series_id``: keyed pseudonyms of PatientID,
  StudyInstanceUID and SeriesInstanceUID (HMAC-SHA-256 under a key the store
  never holds, :class:`Pseudonyms`), so one patient's scans share an id, and
  the same key gives the same ids in every run and store. Without a key they
  are not stored at all.
- ``view_position``, ``modality``, ``body_part``, ``patient_sex``: code strings
  (DICOM's CS: capitals, digits, space and underscore, 16 characters at most),
  kept only when they are one, so no free text passes.
- ``patient_age``: whole years, from PatientAge (``065Y``) or from the birth and
  study dates; over 89 recorded as 90 (HIPAA Safe Harbor).
- ``study_year``: the year of the study only.
- ``pixel_spacing_mm``: PixelSpacing (row, column), else ImagerPixelSpacing.

Nothing else of the header is read into a value that leaves this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import logging
import os
import re
import threading
import warnings
from collections.abc import Iterator
from datetime import date
from typing import TYPE_CHECKING, Any

from xraycore.store.columns import HEADER_COLUMNS
from xraycore.store.storage import Storage

if TYPE_CHECKING:
    from xraycore.store import ScanStore

__all__ = [
    "KEY_VARIABLE",
    "PSEUDONYM_COLUMNS",
    "Pseudonyms",
    "header_columns",
    "read_header",
    "read_headers",
    "refresh_headers",
]

#: The environment variable holding the pseudonym key (on every Dask worker).
KEY_VARIABLE = "XRAY_PSEUDONYM_KEY"
#: The shortest key accepted: 16 characters (``secrets.token_hex(32)`` gives 64).
KEY_MIN_LENGTH = 16
#: Hex digits of a pseudonym: 64 bits, no collision expected below billions of ids.
PSEUDONYM_LENGTH = 16

#: Column -> the header attribute it is a pseudonym of.
PSEUDONYM_COLUMNS = {
    "patient_id": "PatientID",
    "study_id": "StudyInstanceUID",
    "series_id": "SeriesInstanceUID",
}
_CODES = {
    "view_position": "ViewPosition",
    "modality": "Modality",
    "body_part": "BodyPartExamined",
    "patient_sex": "PatientSex",
}
_CODE_STRING = re.compile(r"[A-Z0-9 _]{1,16}")
_AGE = re.compile(r"(\d{1,3})([DWMY])")
_DAYS_PER = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}
#: Ages over this are recorded as :data:`OLDEST` (HIPAA Safe Harbor: 90 or older).
OLDEST = 90


class Pseudonyms:
    """Keyed pseudonyms: ``HMAC-SHA-256(key, "<column>:<value>")``, 16 hex digits.

    The key is never stored or shown (its ``repr`` hides it); :attr:`key_id`, a
    fingerprint of it, is stored beside the pseudonyms so that rows made with
    another key can be told apart.

    Parameters
    ----------
    key : str or bytes
        At least :data:`KEY_MIN_LENGTH` characters.
    """

    def __init__(self, key: str | bytes):
        raw = key.encode() if isinstance(key, str) else bytes(key)
        if len(raw.strip()) < KEY_MIN_LENGTH:
            raise ValueError(
                f"the pseudonym key is {len(raw.strip())} characters; use at least "
                f"{KEY_MIN_LENGTH} (python -c 'import secrets; print(secrets.token_hex(32))')"
            )
        self._key = raw.strip()
        self.key_id = self._digest("xray-pseudonym-key", "")[:8]

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> Pseudonyms | None:
        """The key of :data:`KEY_VARIABLE`, or None when it is unset or empty."""
        value = (os.environ if environ is None else environ).get(KEY_VARIABLE, "")
        return cls(value) if value.strip() else None

    def _digest(self, column: str, value: str) -> str:
        message = f"{column}:{value}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def __call__(self, column: str, value: str) -> str:
        """The pseudonym of ``value`` (a header identifier) in ``column``."""
        return self._digest(column, value)[:PSEUDONYM_LENGTH]

    def __repr__(self) -> str:
        return f"Pseudonyms(key=<hidden>, key_id={self.key_id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Pseudonyms) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(self.key_id)


#: The last element :func:`header_columns` reads, PixelSpacing (0028,0030): a
#: header cut before it may hold it further on (elements come in tag order).
_LAST_TAG = 0x00280030
#: Bytes of a header read to refresh a stored row's columns, then more.
_HEADS = (64 << 10, 1 << 20)


class _Quiet(logging.Filter):
    """Drops pydicom's log records in the threads reading a header here: its
    warnings quote the values they find invalid (a name, a birth date)."""

    def __init__(self) -> None:
        super().__init__()
        self.local = threading.local()

    def filter(self, record: logging.LogRecord) -> bool:
        return not getattr(self.local, "on", False)


_QUIET = _Quiet()
logging.getLogger("pydicom").addFilter(_QUIET)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """No warning and no pydicom log record out of this thread while inside."""
    _QUIET.local.on = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        _QUIET.local.on = False


def read_header(data: bytes, *, complete: bool = True):
    """The header of a DICOM file (no pixels read): a pydicom Dataset, or None
    when it cannot be read. With ``complete=False`` (``data`` is the file's
    first bytes), None also when they may end before an element read here."""
    try:
        import pydicom

        with _quiet():
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            last = max((int(tag) for tag in ds.keys()), default=0)
    except Exception:  # a damaged header: decoding says why, with the pixels
        return None
    if not complete and last <= _LAST_TAG:
        return None
    return ds


def read_headers(
    uris: list[str], pseudonyms: Pseudonyms | None, storage_options: dict | None = None
) -> list[dict[str, Any] | None]:
    """The :func:`header_columns` of DICOM files from their first bytes (ranged
    reads, never the pixels unless a header is longer than 1 MiB), None for a
    file that is gone or whose header cannot be read."""
    import posixpath

    out: list[dict[str, Any] | None] = [None] * len(uris)
    folders: dict[str, list[int]] = {}
    for i, uri in enumerate(uris):
        folders.setdefault(posixpath.dirname(uri), []).append(i)
    for folder, pending in folders.items():
        source = Storage.from_url(folder, storage_options)
        names = {i: posixpath.basename(uris[i]) for i in pending}
        for length in _HEADS:
            if not pending:
                break
            heads = source.read_ranges(
                [names[i] for i in pending], [0] * len(pending), [length] * len(pending)
            )
            still = []
            for i, head in zip(pending, heads, strict=True):
                ds = None if head is None else read_header(head, complete=len(head) < length)
                if ds is not None:
                    out[i] = header_columns(ds, pseudonyms)
                elif head is not None and len(head) >= length:
                    still.append(i)
            pending = still
        for i in pending:
            ds = read_header(source.read_bytes(names[i]))
            out[i] = header_columns(ds, pseudonyms) if ds is not None else None
    return out


def refresh_headers(
    store: ScanStore,
    *,
    run_id: str,
    pseudonyms: Pseudonyms | None = None,
    source_options: dict[str, Any] | None = None,
    skip: set[str] | frozenset[str] = frozenset(),
) -> tuple[int, int]:
    """Fill the header columns of ``store``'s DICOM rows (a source named
    ``.dcm``, ``.dicom`` or nothing) where they are null, from the files'
    headers: ranged reads, no pixel read or written; one version of kind
    ``header``. ``skip``: sources a run processes anyway. Returns (rows filled,
    rows whose identifiers had no key)."""
    import posixpath

    if store.read_only:
        raise ValueError(
            f"store {store.storage.url} is opened at version {store.version}, "
            "read-only: open it without version= to write"
        )
    table = store.read_metadata()
    if table is None:
        return 0, 0
    sources = table.column("source").to_pylist()
    wanted = sorted(
        {
            s
            for s in sources
            if s not in skip
            and posixpath.splitext(posixpath.basename(s))[1].lower() in ("", ".dcm", ".dicom")
        }
    )
    found: dict[str, dict] = {}
    for i in range(0, len(wanted), 512):  # 512 heads in memory at a time
        chunk = wanted[i : i + 512]
        headers = read_headers(chunk, pseudonyms, source_options)
        found.update((uri, c) for uri, c in zip(chunk, headers, strict=True) if c is not None)
    if not found:
        return 0, 0
    unkeyed = sum(1 for s in sources if found.get(s, {}).get("_identifiers"))
    unkeyed = unkeyed if pseudonyms is None else 0
    store.replace_rows(lambda rows: _filled(rows, found), run_id=run_id, kind="header")
    return sum(1 for s in sources if s in found), unkeyed


def _filled(rows, found: dict[str, dict]):
    """``rows`` (metadata) with their null header columns taken from ``found``
    (source -> :func:`header_columns`)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = rows.sort_by([("image_id", "ascending")])
    these = [found.get(s) for s in rows.column("source").to_pylist()]
    for name in HEADER_COLUMNS:
        field = rows.schema.field(name)
        new = pa.array([c.get(name) if c else None for c in these], field.type)
        if name == "pseudonym_key":  # only where this fill gave a pseudonym
            gave = pc.and_(*[pc.is_null(rows[c]) for c in list(PSEUDONYM_COLUMNS)[:2]])
            new = pc.if_else(gave, new, pa.nulls(len(new), field.type))
        column = pc.coalesce(rows[name], new)
        rows = rows.set_column(rows.column_names.index(name), field, column)
    return rows


def header_columns(ds, pseudonyms: Pseudonyms | None) -> dict[str, Any]:
    """The :data:`HEADER_COLUMNS` of a header (a pydicom Dataset); identifiers
    only with ``pseudonyms``. Also ``"_identifiers"``: True when the header
    names a patient, study or series (so a run without a key can say that it
    dropped them); callers remove it."""
    with _quiet():  # a value is read (and validated, and maybe warned of) on access
        return _columns(ds, pseudonyms)


def _columns(ds, pseudonyms: Pseudonyms | None) -> dict[str, Any]:
    out: dict[str, Any] = dict.fromkeys(HEADER_COLUMNS)
    named = False
    for column, keyword in PSEUDONYM_COLUMNS.items():
        value = _text(ds, keyword)
        if value:
            named = True
            if pseudonyms is not None:
                out[column] = pseudonyms(column, value)
    if named and pseudonyms is not None:
        out["pseudonym_key"] = pseudonyms.key_id
    for column, keyword in _CODES.items():
        value = (_text(ds, keyword) or "").upper()
        out[column] = value if _CODE_STRING.fullmatch(value) else None
    study = _date(ds, "StudyDate") or _date(ds, "SeriesDate") or _date(ds, "AcquisitionDate")
    out["study_year"] = study.year if study else None
    out["patient_age"] = _age(_text(ds, "PatientAge"), _date(ds, "PatientBirthDate"), study)
    out["pixel_spacing_mm"] = _spacing(ds)
    out["_identifiers"] = named
    return out


def _text(ds, keyword: str) -> str | None:
    try:
        value = ds.get(keyword)
    except Exception:  # a malformed element: as if absent
        return None
    if value is None:
        return None
    text = str(value).strip().strip("\x00").strip()
    return text or None


def _date(ds, keyword: str) -> date | None:
    text = _text(ds, keyword)
    if not text or not re.fullmatch(r"\d{8}", text[:8]):
        return None
    try:
        return date(int(text[:4]), int(text[4:6]), int(text[6:8]))
    except ValueError:
        return None


def _age(text: str | None, born: date | None, study: date | None) -> int | None:
    """Whole years from an Age String (``065Y``, ``018M``, ``003W``, ``010D``),
    else from the birth and study dates; capped at :data:`OLDEST`."""
    years = None
    found = _AGE.fullmatch(text or "")
    if found:
        years = int(float(found.group(1)) * _DAYS_PER[found.group(2)] // 365.25)
    elif born and study and born <= study:
        years = study.year - born.year - ((study.month, study.day) < (born.month, born.day))
    if years is None or years < 0:
        return None
    return min(years, OLDEST)


def _spacing(ds) -> list[float] | None:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        try:
            value = ds.get(keyword)
            if value is None:
                continue
            many = hasattr(value, "__iter__") and not isinstance(value, str | bytes)
            values = [float(v) for v in value] if many else [float(value)]
        except (TypeError, ValueError):
            continue
        if values and all(v > 0 for v in values):
            return values[:2]
    return None
