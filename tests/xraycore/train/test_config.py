"""A training run's configuration (xraycore.train.config): checked when made, frozen,
stored as plain values and read back, compared field by field on resume."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from xraycore.predict.contract import ModelContract
from xraycore.train.cnn import cnn_contract
from xraycore.train.config import TrainConfig


def test_defaults_are_the_documented_ones():
    c = TrainConfig(target="finding_pneumonia")
    assert (c.epochs, c.batch_size, c.lr, c.seed, c.workers) == (1, 64, 1e-3, 0, 0)
    assert (c.split, c.validation, c.uncertain, c.arch) == (
        "train",
        "validation",
        "ignore",
        "densenet121",
    )
    assert c.contract == cnn_contract() and c.stage_two_lr == pytest.approx(1e-4)
    assert (c.device, c.precision, c.balance, c.resume) == ("auto", "auto", True, False)
    assert c.label_columns == ["finding_pneumonia"]
    assert TrainConfig(targets="findings").label_columns == "findings"


def test_it_is_frozen_and_normalised():
    c = TrainConfig(
        targets=["finding_a", "finding_b"],
        where={"view_position": ["PA"]},
        checkpoints="ck",
        weights="w.pt",
        lr=1,
    )
    assert c.targets == ("finding_a", "finding_b") and c.label_columns == ["finding_a", "finding_b"]
    assert c.checkpoints == Path("ck") and c.weights == Path("w.pt")
    assert c.lr == 1.0 and isinstance(c.lr, float)
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.epochs = 2  # type: ignore[misc]
    with pytest.raises(TypeError, match="positional"):  # keywords only
        TrainConfig("finding_pneumonia")  # type: ignore[misc]


def test_to_dict_is_plain_and_reads_back():
    c = TrainConfig(
        targets=["finding_a"],
        where={"sex": "F"},
        contract=cnn_contract(64),
        checkpoints=Path("ck"),
        checkpoint_steps=5,
        finetune_lr=3e-5,
        patience=2,
    )
    values = c.to_dict()
    json.dumps(values)  # plain values only: str, numbers, lists, tuples, dicts
    assert values["contract"] == cnn_contract(64).to_dict() and values["checkpoints"] == "ck"
    assert TrainConfig.from_dict(values) == c


def test_resume_compares_the_kept_fields_only():
    c = TrainConfig(target="finding_pneumonia", checkpoints="ck")
    free = dataclasses.replace(
        c, workers=2, device="cpu", precision="fp32", max_steps=3, checkpoint_steps=1, resume=True
    )
    assert free.resume_differences(c) == []
    # finetune_lr is compared as the rate it means: None is lr / 10.
    assert dataclasses.replace(c, finetune_lr=1e-4).resume_differences(c) == []
    other = dataclasses.replace(c, lr=0.01, epochs=3, where={"sex": "F"})
    assert other.resume_differences(c) == [
        "where None (now {'sex': 'F'})",
        "epochs 1 (now 3)",
        "lr 0.001 (now 0.01)",
        "finetune_lr 0.0001 (now 0.001)",
    ]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"uncertain": "maybe"}, "uncertain must be one of"),
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"freeze_epochs": -1}, "freeze_epochs must be an int >= 0"),
        ({"patience": 0}, "patience must be an int >= 1"),
        ({"seed": -1}, "seed must be an int >= 0"),
        ({"finetune_lr": 0.0}, "finetune_lr must be > 0"),
        ({"checkpoint_steps": 2}, "checkpoint_steps needs a checkpoints folder"),
        ({"checkpoints": "ck", "checkpoint_steps": 0}, "checkpoint_steps must be an int >= 1"),
        ({"resume": True}, "resume needs the checkpoints folder"),
        ({"arch": "resnet50"}, "arch must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"contract": ModelContract(size=16)}, "size must be >= 32"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match) as info:
        TrainConfig(target="finding_pneumonia", **kwargs)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("kwargs", [{}, {"target": "finding_a", "targets": "findings"}])
def test_one_of_target_and_targets(kwargs):
    with pytest.raises(ValueError, match="give target .* or targets .*not both nor neither"):
        TrainConfig(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 1.5}, "epochs must be an int"),
        ({"where": "PA"}, "where must be a dict"),
        ({"contract": {"size": 64}}, "contract must be a ModelContract"),
    ],
)
def test_values_of_the_wrong_type_are_type_errors(kwargs, match):
    with pytest.raises(TypeError, match=match):
        TrainConfig(target="finding_pneumonia", **kwargs)
