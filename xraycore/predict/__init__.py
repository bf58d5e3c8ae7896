"""Prediction from a store: the model contract and ONNX classifier
(:mod:`.contract`), which rows a model still has to score (:mod:`.scoring`), a
model's evaluation against the labels (:mod:`.evaluation`) and what a run shows a
person (:mod:`.report`).
"""

from xraycore.predict.contract import ModelContract, OnnxClassifier, model_sha256
from xraycore.predict.evaluation import evaluate_store

__all__ = ["ModelContract", "OnnxClassifier", "evaluate_store", "model_sha256"]
