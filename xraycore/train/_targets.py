"""Several label columns as one target vector per row, with a mask of the known ones.

A finding column holds 1 (present), 0 (absent), -1 (uncertain: CheXpert's and
MIMIC-CXR's labellers) or nothing (not mentioned); a boolean column (ChestX-ray8)
holds True or False. The uncertain policy is one of the CheXpert paper's (Irvin et
al. 2019, section 4): ignore the label (U-Ignore), or read it as 0 (U-Zeros) or
as 1 (U-Ones).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from xraycore.store.columns import FINDING_UNCERTAIN, finding_column, finding_columns

__all__ = ["UNCERTAIN", "FINDINGS", "LabelMatrix", "label_matrix", "target_columns"]

#: The uncertain-label policies, the first the default.
UNCERTAIN = ("ignore", "zeros", "ones")
#: ``targets=`` value meaning every finding column of the metadata.
FINDINGS = "findings"


@dataclass(frozen=True)
class LabelMatrix:
    """Targets (N, K) float32 0/1, ``mask`` (N, K) bool (True where the label
    counts), and the K column names."""

    names: tuple[str, ...]
    targets: np.ndarray
    mask: np.ndarray

    @property
    def positives(self) -> np.ndarray:
        """Per column, the rows whose counted label is 1."""
        return ((self.targets == 1) & self.mask).sum(axis=0).astype(np.int64)

    @property
    def negatives(self) -> np.ndarray:
        """Per column, the rows whose counted label is 0."""
        return ((self.targets == 0) & self.mask).sum(axis=0).astype(np.int64)


def target_columns(targets, columns: list[str]) -> tuple[str, ...]:
    """The metadata columns ``targets`` names: ``"findings"`` for every
    ``finding_*`` column (sorted), or a list of findings or columns
    (``"Pleural Thickening"`` or ``finding_pleural_thickening``)."""
    if isinstance(targets, str):
        if targets != FINDINGS:
            raise ValueError(f"targets must be {FINDINGS!r} or a list of columns, got {targets!r}")
        names = tuple(finding_columns(columns))
        if not names:
            raise ValueError("targets='findings', but the metadata has no finding_* column")
        return names
    names = tuple(finding_column(str(t)) if str(t) not in columns else str(t) for t in targets)
    if not names:
        raise ValueError("targets must name at least one column, got []")
    if len(set(names)) != len(names):
        raise ValueError(f"targets has duplicates: {list(names)}")
    absent = [n for n in names if n not in columns]
    if absent:
        found = finding_columns(columns)
        raise ValueError(f"metadata has no target column {absent}; label columns: {found}")
    return names


def label_matrix(table, names: tuple[str, ...], *, uncertain: str = "ignore") -> LabelMatrix:
    """The targets and mask of ``table``'s rows in columns ``names``.

    Parameters
    ----------
    table : pyarrow.Table
        Metadata rows.
    names : tuple of str
        Boolean, integer or float columns holding 1, 0, -1 or null (NaN).
    uncertain : {"ignore", "zeros", "ones"}
        What a -1 becomes: masked out, a 0 or a 1.

    Returns
    -------
    labels : LabelMatrix
    """
    if uncertain not in UNCERTAIN:
        raise ValueError(f"uncertain must be one of {UNCERTAIN}, got {uncertain!r}")
    n = table.num_rows
    targets = np.zeros((n, len(names)), np.float32)
    mask = np.zeros((n, len(names)), bool)
    for k, name in enumerate(names):
        values = _column_values(table[name], name)
        known = ~np.isnan(values)
        unsure = known & (values == FINDING_UNCERTAIN)
        targets[:, k] = np.where(known & (values == 1), 1.0, 0.0)
        mask[:, k] = known & ~unsure
        if uncertain != "ignore":
            targets[unsure, k] = 1.0 if uncertain == "ones" else 0.0
            mask[unsure, k] = True
    return LabelMatrix(names=tuple(names), targets=targets, mask=mask)


def _column_values(column, name: str) -> np.ndarray:
    """A label column as float64 with NaN for a missing label; anything but 1,
    0, -1 and missing is refused."""
    import pyarrow as pa

    kind = column.type
    if not (pa.types.is_boolean(kind) or pa.types.is_integer(kind) or pa.types.is_floating(kind)):
        raise ValueError(f"target {name!r} must be a boolean, integer or float column, got {kind}")
    values = np.asarray(
        column.cast(pa.float64()).fill_null(np.nan).to_numpy(zero_copy_only=False), np.float64
    )
    known = values[~np.isnan(values)]
    other = np.setdiff1d(known, (1.0, 0.0, float(FINDING_UNCERTAIN)))
    if other.size:
        raise ValueError(
            f"target {name!r} holds {other[:5].tolist()}: a label is 1, 0, -1 (uncertain) "
            "or missing"
        )
    return values
