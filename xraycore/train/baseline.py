"""The store as an ML training set: patient-grouped splits, a PyTorch-style
Dataset (no torch import), and a small baseline classifier exported to ONNX.

The baseline needs only NumPy and onnx: a logistic regression on 8x8
average-pooled pixels, so the loop run -> split -> train -> classify -> report
works with no pre-trained weights and no deep-learning framework. For a
DenseNet-121 or the course's classifier, export it to ONNX and describe its
input in a sidecar ``model.onnx.json`` (see README).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import numpy as np

from xraycore.predict.contract import ModelContract, prepare_batch
from xraycore.store import ScanStore
from xraycore.store.durable import atomic_path, write_atomic

__all__ = ["ScanDataset", "assign_splits", "export_logistic_onnx", "train_logistic", "write_splits"]

SPLITS = ("train", "validation", "test")


def assign_splits(
    table,
    *,
    fractions: tuple[float, float, float] = (0.8, 0.1, 0.1),
    seed: int = 0,
    group: str = "patient_id",
) -> list[str | None]:
    """A split per metadata row, grouped so no patient is in two splits.

    Groups (``group`` column, or the image id when absent or null) are placed by
    a seeded hash, so adding scans later never moves a patient. Failed rows get
    None.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(
            f"fractions must be three non-negative numbers summing to 1, got {fractions!r}"
        )
    names = table.column_names
    ids = table.column("image_id").to_pylist()
    groups = table.column(group).to_pylist() if group in names else [None] * len(ids)
    status = table.column("status").to_pylist()
    edges = np.cumsum(fractions)
    out: list[str | None] = []
    for image_id, g, st in zip(ids, groups, status, strict=True):
        if st != "ok":
            out.append(None)
            continue
        key = f"{seed}:{g if g is not None else image_id}".encode()
        u = int.from_bytes(hashlib.sha256(key).digest()[:8], "big") / 2**64
        out.append(SPLITS[int(np.searchsorted(edges, u, side="right").clip(0, 2))])
    return out


def write_splits(store: ScanStore, splits: list[str | None], run_id: str) -> None:
    """Write the ``split`` column into the store's metadata (a new version of
    kind ``split``: the rows of earlier versions keep their splits)."""
    import pyarrow as pa

    def with_splits(table):
        if table.num_rows != len(splits):
            raise ValueError(
                f"{len(splits)} splits for {table.num_rows} metadata rows: "
                "the store changed since the splits were assigned; assign them again"
            )
        if "split" in table.column_names:
            table = table.drop_columns(["split"])
        return table.append_column("split", pa.array(splits, pa.string()))

    store.replace_rows(with_splits, run_id=run_id, kind="split")


class ScanDataset:
    """A map-style dataset over a store, usable by ``torch.utils.data.DataLoader``.

    Parameters
    ----------
    store : ScanStore or str
    split : str, optional
        Keep rows of this split ("train", "validation", "test").
    target : str, optional
        Boolean metadata column returned as the label (e.g. ``finding_pneumonia``).
    where : dict, optional
        Column -> required value (e.g. ``{"view_position": "PA"}``).
    array : str, optional
        Which stored array to return. Default ``preprocessed``.
    transform : callable, optional
        Applied to each image.
    """

    def __init__(
        self,
        store,
        *,
        split: str | None = None,
        target: str | None = None,
        where: dict[str, Any] | None = None,
        array: str = "preprocessed",
        transform=None,
        storage_options: dict | None = None,
    ):
        self.store = (
            store if isinstance(store, ScanStore) else ScanStore.open(store, storage_options)
        )
        rows = self.store.select(split=split, where=where, target=target, empty_ok=True)
        rows = rows.to_pylist()
        self.rows = rows
        self.target = target
        self.array = array
        self.transform = transform

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        r = self.rows[i]
        image = self.store.read(self.array, int(r["row"]))
        if self.transform is not None:
            image = self.transform(image)
        return image if self.target is None else (image, int(bool(r[self.target])))

    def arrays(self) -> tuple[np.ndarray, np.ndarray | None]:
        """All images (N, S, S) in one read, and the targets."""
        idx = [int(r["row"]) for r in self.rows]
        images = self.store.read(self.array, idx) if idx else np.zeros((0, 0, 0), np.uint8)
        y = None if self.target is None else np.array([bool(r[self.target]) for r in self.rows])
        return images, y


_POOL = 8


def _features(x: np.ndarray) -> np.ndarray:
    """Mean over channels and 8x8 average pooling of prepared NCHW inputs."""
    g = x.mean(axis=1)
    n, h, w = g.shape
    return g.reshape(n, h // _POOL, _POOL, w // _POOL, _POOL).mean(axis=(2, 4)).reshape(n, -1)


def train_logistic(
    images: np.ndarray,
    y: np.ndarray,
    *,
    contract: ModelContract | None = None,
    l2: float = 1e-2,
    epochs: int = 300,
    lr: float = 0.5,
) -> dict[str, Any]:
    """Fit L2-regularised logistic regression on pooled pixels (full-batch
    gradient descent on standardised features). Returns weights in input units."""
    contract = contract or ModelContract()
    if contract.size % _POOL:
        raise ValueError(f"contract size must be a multiple of {_POOL}, got {contract.size}")
    if len(images) != len(y) or len(images) < 2:
        raise ValueError("need at least two images, one label each")
    if len(set(np.asarray(y).tolist())) < 2:
        raise ValueError("training labels hold a single class; nothing to learn")
    x = _features(prepare_batch(images, contract)).astype(np.float64)
    mu, sd = x.mean(0), x.std(0) + 1e-6
    z = (x - mu) / sd
    t = np.asarray(y, np.float64)
    w, b = np.zeros(z.shape[1]), 0.0
    for _ in range(epochs):
        p = 1 / (1 + np.exp(-(z @ w + b)))
        g = p - t
        w -= lr * (z.T @ g / len(t) + l2 * w)
        b -= lr * g.mean()
    # Fold the standardisation into the weights: score = sigmoid(x @ W + B).
    return {"weights": w / sd, "bias": b - float((w / sd) @ mu), "contract": contract}


def export_logistic_onnx(model: dict[str, Any], path) -> None:
    """Write the trained model as ONNX with its contract as a sidecar JSON:
    input (N, C, S, S) float32 -> ReduceMean(C) -> AveragePool(8) -> Gemm -> Sigmoid."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    c: ModelContract = model["contract"]
    if c.layout != "NCHW" or c.output != "sigmoid":
        raise ValueError("the baseline exports NCHW input and one sigmoid output")
    s = c.size
    w = numpy_helper.from_array(model["weights"].astype(np.float32).reshape(-1, 1), "W")
    b = numpy_helper.from_array(np.array([model["bias"]], np.float32), "B")
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    nodes = [
        helper.make_node("ReduceMean", ["input", "axes"], ["gray"], keepdims=1),
        helper.make_node(
            "AveragePool", ["gray"], ["pooled"], kernel_shape=[_POOL, _POOL], strides=[_POOL, _POOL]
        ),
        helper.make_node("Flatten", ["pooled"], ["flat"], axis=1),
        helper.make_node("Gemm", ["flat", "W", "B"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["score"]),
    ]
    graph = helper.make_graph(
        nodes,
        "xray_logistic_baseline",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", c.channels, s, s])],
        [helper.make_tensor_value_info("score", TensorProto.FLOAT, ["N", 1])],
        initializer=[w, b, axes],
    )
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model)
    path = str(path)
    with atomic_path(path) as tmp:
        onnx.save(onnx_model, tmp)
    write_atomic(path + ".json", json.dumps(c.to_dict(), indent=2).encode())
