"""ONNX classification of stored scans, its input contract, and evaluation.

The default contract is the damaged-scan restoration notes' ``classify.py``: 256x256, three channels
(the grayscale scan repeated, RGB order), scaled by 1/255, one sigmoid output,
> 0.5 means pneumonia. Another model declares its own contract in a sidecar
JSON file next to it (``model.onnx.json``) or through flags.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import cv2
import numpy as np

from xraycore.store.columns import absent_label, finding_name
from xraycore.store.storage import Storage

__all__ = [
    "ModelContract",
    "OnnxClassifier",
    "classification_report",
    "model_sha256",
    "prepare_batch",
]


@dataclass(frozen=True)
class ModelContract:
    """How scans become model inputs and outputs become labels.

    Attributes
    ----------
    size : int
        Input height and width. Default 256 (the restoration notes' ``classify.py``).
    channels : int
        1, or 3 (the grayscale scan repeated). Default 3.
    scale : float
        Multiplier applied to uint8 pixels. Default 1/255.
    mean, std : tuple of float
        Per-channel normalisation after scaling: ``(x * scale - mean) / std``.
    threshold : float
        Score above which the positive label is given. Default 0.5.
    labels : (str, str)
        Negative and positive label names. Default ("healthy", "pneumonia").
    output : {"sigmoid", "softmax2"}
        One probability per image, or two class probabilities (positive second).
    layout : {"NCHW", "NHWC"}
        Input tensor layout. Default NCHW (OpenCV's ``blobFromImage``).
    findings : tuple of str
        A multi-output model's findings (metadata columns, ``finding_*``), one
        sigmoid output each, in output order; empty (default) for a model of
        one finding, whose ``labels`` name its two classes.
    thresholds : tuple of float
        Per finding, the score above which it is called present (chosen on the
        validation split when trained here); empty: ``threshold`` for all.
    training : dict, optional
        The model's lineage, written by ``xray train``: which store, at which
        version, which rows (``rows_sha256``) it was trained on
        (:func:`xraycore.train.lineage.training_lineage`). None for a model
        from elsewhere.
    """

    size: int = 256
    channels: int = 3
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    threshold: float = 0.5
    labels: tuple[str, str] = ("healthy", "pneumonia")
    output: str = "sigmoid"
    layout: str = "NCHW"
    findings: tuple[str, ...] = ()
    thresholds: tuple[float, ...] = ()
    training: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "findings", tuple(str(f) for f in self.findings))
        object.__setattr__(self, "thresholds", tuple(float(t) for t in self.thresholds))
        object.__setattr__(self, "mean", tuple(float(m) for m in self.mean))
        object.__setattr__(self, "std", tuple(float(s) for s in self.std))
        object.__setattr__(self, "labels", tuple(str(x) for x in self.labels))
        if self.size < 8:
            raise ValueError(f"size must be >= 8, got {self.size!r}")
        if self.channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {self.channels!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise ValueError(f"mean and std need {self.channels} values each")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std must be > 0, got {self.std!r}")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold must be in [0, 1], got {self.threshold!r}")
        if len(self.labels) != 2:
            raise ValueError(f"labels must name two classes, got {self.labels!r}")
        if self.output not in ("sigmoid", "softmax2"):
            raise ValueError(f"output must be 'sigmoid' or 'softmax2', got {self.output!r}")
        if self.layout not in ("NCHW", "NHWC"):
            raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        self._check_findings()

    def _check_findings(self) -> None:
        if len(set(self.findings)) != len(self.findings):
            raise ValueError(f"findings has duplicates: {list(self.findings)}")
        if self.findings and self.output != "sigmoid":
            raise ValueError(
                f"a model of several findings has sigmoid outputs, got {self.output!r}"
            )
        if self.thresholds and len(self.thresholds) != len(self.findings):
            raise ValueError(
                f"thresholds needs one value per finding ({len(self.findings)}), "
                f"got {len(self.thresholds)}"
            )
        if any(not 0 <= t <= 1 for t in self.thresholds):
            raise ValueError(f"thresholds must be in [0, 1], got {list(self.thresholds)}")

    @property
    def outputs(self) -> int:
        """Scores the model gives per image: one per finding, or 1."""
        return max(len(self.findings), 1)

    def threshold_of(self, k: int) -> float:
        """The threshold of output ``k``."""
        return self.thresholds[k] if self.thresholds else self.threshold

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelContract:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"model contract has unknown keys {sorted(unknown)}")
        if "channels" in d and "mean" not in d:
            d = {**d, "mean": (0.0,) * int(d["channels"]), "std": (1.0,) * int(d["channels"])}
        return cls(**d)

    @classmethod
    def for_model(
        cls, model_url: str, storage_options: dict | None = None, **overrides
    ) -> ModelContract:
        """The contract of a model: its sidecar ``<model>.json`` if there is one,
        else that of the restoration notes' ``classify.py``, with ``overrides``
        (non-None values) on top."""
        storage = Storage.from_url(model_url + ".json", storage_options)
        base: dict[str, Any] = {}
        if storage.exists():
            try:
                base = json.loads(storage.read_bytes())
            except ValueError as exc:
                raise ValueError(f"{model_url}.json is not valid JSON: {exc}") from exc
        base.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(base)


def prepare_batch(scans: np.ndarray, contract: ModelContract) -> np.ndarray:
    """Apply the input contract to a stack of (N, S, S) uint8 grayscale scans.

    Returns
    -------
    batch : float32 array, (N, C, size, size) or (N, size, size, C)
    """
    scans = np.asarray(scans)
    if scans.ndim != 3 or scans.dtype != np.uint8:
        raise ValueError(f"scans must be (N, S, S) uint8, got {scans.shape} {scans.dtype}")
    n, c, s = len(scans), contract.channels, contract.size
    out = np.empty((n, c, s, s), np.float32)
    for i, scan in enumerate(scans):
        if scan.shape != (s, s):
            interp = cv2.INTER_AREA if scan.shape[0] > s else cv2.INTER_LINEAR
            scan = cv2.resize(scan, (s, s), interpolation=interp)
        x = scan.astype(np.float32) * contract.scale
        for ch in range(c):
            out[i, ch] = (x - contract.mean[ch]) / contract.std[ch]
    return out if contract.layout == "NCHW" else out.transpose(0, 2, 3, 1).copy()


def model_sha256(model: str, storage_options: dict[str, Any] | None = None) -> str:
    """SHA-256 of the model file: predictions are keyed by it, not by its URL.

    Parameters
    ----------
    model : str
        The model's URL (local path or ``s3://``).
    storage_options : dict, optional
        fsspec options for reading it.

    Returns
    -------
    sha256 : str
        Hex digest of the file's bytes.
    """
    return _model_file(model, storage_options)[1]


def _model_file(model: str, storage_options: dict[str, Any] | None) -> tuple[bytes, str]:
    """The model file's bytes and their SHA-256 (read once: the classifier loads
    the same bytes it names its predictions by)."""
    storage = Storage.from_url(model, storage_options)
    try:
        data = storage.read_bytes()
    except FileNotFoundError as exc:
        raise ValueError(f"model {model} does not exist") from exc
    return data, hashlib.sha256(data).hexdigest()


@lru_cache(maxsize=4)
def _session(model_bytes_sha: str, model_bytes: bytes):
    import onnxruntime as ort

    available = ort.get_available_providers()
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in available]
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # one Dask worker per core already
    return ort.InferenceSession(model_bytes, sess_options=options, providers=providers)


class OnnxClassifier:
    """An ONNX model and its contract (onnxruntime; CUDA provider when present)."""

    def __init__(
        self,
        model_url: str,
        contract: ModelContract | None = None,
        storage_options: dict | None = None,
    ):
        try:
            import onnxruntime  # noqa: F401
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise ImportError(
                "classification needs onnxruntime: pip install 'xray-pipeline[classify]'"
            ) from exc
        data, self.sha256 = _model_file(model_url, storage_options)
        self.model_url = model_url
        self.contract = contract or ModelContract.for_model(model_url, storage_options)
        try:
            self.session = _session(self.sha256, data)
        except Exception as exc:
            raise ValueError(f"model {model_url} cannot be loaded by onnxruntime: {exc}") from exc
        self.input_name = self.session.get_inputs()[0].name

    def scores(self, scans: np.ndarray) -> np.ndarray:
        """Probability of the positive label for each (S, S) uint8 scan: (N,), or
        (N, K) for a model of K findings (its contract's ``findings``)."""
        out = np.asarray(
            self.session.run(None, {self.input_name: prepare_batch(scans, self.contract)})[0]
        )
        out = out.reshape(len(scans), -1)
        if self.contract.findings:
            k = len(self.contract.findings)
            if out.shape[1] != k:
                raise ValueError(f"model gives {out.shape[1]} outputs, contract names {k} findings")
            return out.astype(np.float64)
        if self.contract.output == "sigmoid":
            if out.shape[1] != 1:
                raise ValueError(f"model gives {out.shape[1]} outputs, contract says 1 (sigmoid)")
            return out[:, 0].astype(np.float64)
        if out.shape[1] != 2:
            raise ValueError(f"model gives {out.shape[1]} outputs, contract says 2 (softmax2)")
        return out[:, 1].astype(np.float64)

    def labels(self, scores: np.ndarray) -> list[str]:
        """The label of each score (of a model of one finding)."""
        neg, pos = self.contract.labels
        return [pos if s > self.contract.threshold else neg for s in scores]

    def finding_labels(self, scores: np.ndarray) -> list[list[str]]:
        """Per image and finding of a multi-output model, the finding's name
        (``finding_`` dropped) when its score is above its threshold, else
        ``no <name>``."""
        names = [finding_name(f) for f in self.contract.findings]
        return [
            [
                n if s > self.contract.threshold_of(k) else absent_label(n)
                for k, (n, s) in enumerate(zip(names, row, strict=True))
            ]
            for row in scores
        ]


def classification_report(y_true: list[str], y_pred: list[str], labels: tuple[str, ...]) -> dict:
    """Accuracy, per-class precision/recall/F1/support, macro and weighted
    averages and the confusion matrix (rows true, columns predicted), as seed
    004 prints them (scikit-learn's definitions; 0 where undefined)."""
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items, y_pred {len(y_pred)}")
    index = {label: i for i, label in enumerate(labels)}
    cm = np.zeros((len(labels), len(labels)), np.int64)
    for t, p in zip(y_true, y_pred, strict=True):
        cm[index[t], index[p]] += 1
    per_class = {}
    for i, label in enumerate(labels):
        tp = int(cm[i, i])
        predicted, support = int(cm[:, i].sum()), int(cm[i, :].sum())
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        per_class[label] = {
            "precision": precision,
            "recall": recall,
            "f1-score": f1,
            "support": support,
        }
    total = int(cm.sum())
    report: dict[str, Any] = dict(per_class)
    report["accuracy"] = float(np.trace(cm)) / total if total else 0.0
    for avg in ("macro avg", "weighted avg"):
        weights = [per_class[lb]["support"] if avg == "weighted avg" else 1 for lb in labels]
        wsum = sum(weights) or 1
        report[avg] = {
            k: sum(per_class[lb][k] * w for lb, w in zip(labels, weights, strict=True)) / wsum
            for k in ("precision", "recall", "f1-score")
        }
        report[avg]["support"] = total
    report["labels"] = list(labels)
    report["confusion_matrix"] = cm.tolist()
    return report
