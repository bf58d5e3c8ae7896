"""Training from a store: the shuffled, sharded loader (:mod:`.loader`, with its
shard cache and torch side), patient-grouped splits and the logistic baseline
(:mod:`.baseline`), and the CNN training (:mod:`.cnn`, torch imported on demand)
with its configuration (:class:`TrainConfig`, :mod:`.config`).
"""

from xraycore.train.baseline import ScanDataset, assign_splits, write_splits
from xraycore.train.config import TrainConfig
from xraycore.train.loader import ScanLoader

__all__ = ["ScanDataset", "ScanLoader", "TrainConfig", "assign_splits", "write_splits"]
