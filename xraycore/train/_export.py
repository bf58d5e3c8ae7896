"""A trained CNN's scores and its ONNX export (with its contract as a sidecar)."""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from pathlib import Path

import numpy as np

from xraycore.predict.contract import ModelContract, prepare_batch
from xraycore.store.durable import atomic_path, write_atomic
from xraycore.train._network import TrainedCNN, import_torch

__all__ = ["cnn_scores", "export_cnn_onnx", "model_metadata"]


def cnn_scores(network, scans: np.ndarray, contract: ModelContract, *, batch_size: int = 16):
    """Probability of the positive label for (N, S, S) uint8 scans, by torch in
    eval mode in fp32 on the network's device: what the exported ONNX model gives.
    (N,) for a model of one finding, (N, K) for one of K (``contract.findings``)."""
    torch = import_torch()
    network.eval()
    dev = next(network.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(scans), batch_size):
            x = torch.from_numpy(prepare_batch(scans[start : start + batch_size], contract))
            out.append(torch.sigmoid(network(x.to(dev)).float()).cpu().numpy())
    shape = (0, contract.outputs)
    scores = np.concatenate(out).astype(np.float64) if out else np.zeros(shape)
    return scores if contract.findings else scores[:, 0]


def model_metadata(model: TrainedCNN) -> dict:
    """What ``model.onnx.json`` holds: the model's contract (its findings for a
    model of several). The one place the sidecar is made."""
    return model.contract.to_dict()


@contextlib.contextmanager
def _quiet_exporter():
    """The exporter's notes that are not about this model: torchvision's
    operators it skips registering, and a deprecation inside torch itself."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings(
                "ignore", message=r".*isinstance\(treespec, LeafSpec\)", category=FutureWarning
            )
            yield
    finally:
        registration.setLevel(level)


def export_cnn_onnx(model: TrainedCNN, path: str | os.PathLike) -> Path:
    """Write the network, sigmoid included, as ONNX with its contract as the
    sidecar ``<path>.json`` (:func:`model_metadata`); input (N, C, S, S) float32
    named "input", output (N, K) "score" (K = 1, or the contract's findings).

    Notes
    -----
    torch's ``torch.export``-based exporter (its default since 2.9; the
    TorchScript one is deprecated), opset 18 and IR version 8 as the NumPy
    baseline, one file with its weights inside (``xray classify`` hands
    onnxruntime the model's bytes, so external weight files would be lost).
    """
    import json

    torch = import_torch()
    path = Path(path)
    c = model.contract
    wrapped = torch.nn.Sequential(model.network, torch.nn.Sigmoid()).cpu().float().eval()
    example = torch.zeros(2, c.channels, c.size, c.size)  # 2, not 1: a batch of 1 is specialised
    with _quiet_exporter():
        program = torch.onnx.export(
            wrapped,
            (example,),
            dynamo=True,
            opset_version=18,
            input_names=["input"],
            output_names=["score"],
            dynamic_shapes=({0: torch.export.Dim("N")},),
            verbose=False,
        )
    # The exporter stamps IR version 10; the graph uses nothing newer than IR 8
    # (plain opset-18 operators, no functions), which onnxruntime 1.17 still loads.
    program.model.ir_version = 8
    with atomic_path(path) as tmp:
        program.save(tmp, external_data=False)
    write_atomic(f"{path}.json", json.dumps(model_metadata(model), indent=2).encode())
    return path
