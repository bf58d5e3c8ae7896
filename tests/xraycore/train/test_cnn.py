"""CNN training from a store (xraycore.train.cnn): it learns, its inputs are the
contract's, its ONNX export scores as torch does, checkpoints round-trip."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from stores import labelled_store

from xraycore.predict.contract import ModelContract, OnnxClassifier, prepare_batch
from xraycore.store import ScanStore
from xraycore.train import _run, cnn
from xraycore.train.cnn import IMAGENET_MEAN, IMAGENET_STD, TrainConfig, cnn_contract

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

STORED = 48  # stored size; the model sees 32, so every batch is resized (48 -> 32, INTER_AREA)
SIZE = 32


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    return labelled_store(tmp_path_factory.mktemp("cnn"), n=32, size=STORED)


@pytest.fixture(scope="module")
def trained(store):
    epochs = []
    config = TrainConfig(
        target="finding_pneumonia",
        contract=cnn_contract(SIZE),
        batch_size=8,
        epochs=4,
        seed=0,
        device="cpu",
    )
    model = cnn.train_cnn(store, config, on_epoch=epochs.append)
    return model, epochs


def test_contract_is_imagenet_normalised_and_batches_are_prepare_batch(store):
    c = cnn_contract(SIZE, labels=("no pneumonia", "pneumonia"))
    assert (c.size, c.channels, c.output, c.layout) == (SIZE, 3, "sigmoid", "NCHW")
    assert c.mean == IMAGENET_MEAN and c.std == IMAGENET_STD
    scans = ScanStore.open(store).read("preprocessed", [0, 1, 2])
    x, y, mask = _run.prepare_tensors(
        {"preprocessed": torch.from_numpy(scans), "target": torch.tensor([0, 1, 0])}, contract=c
    )
    # The numbers `xray classify` feeds the ONNX model, bit for bit.
    assert x.dtype == torch.float32 and x.shape == (3, 3, SIZE, SIZE)
    assert np.array_equal(x.numpy(), prepare_batch(scans, c))
    assert y.dtype == torch.float32 and y.tolist() == [[0], [1], [0]]
    assert mask.dtype == torch.bool and mask.all()


def test_training_learns_bright_from_dark(trained):
    model, epochs = trained
    # 24 training scans in batches of 8: 4 epochs of 3 steps, each followed by validation.
    assert model.steps == 12 and model.scans == 96 and len(model.losses) == 12
    assert [e.epoch for e in epochs] == [1, 2, 3, 4] and all(e.epochs == 4 for e in epochs)
    assert all(e.validation_count == 8 for e in epochs)
    assert model.losses[0] > 0.5, model.losses  # untrained: about chance, ln 2 = 0.69
    assert np.mean(model.losses[-3:]) < 0.5 * model.losses[0], model.losses
    assert epochs[-1].loss < epochs[0].loss
    assert (model.device, model.precision) == ("cpu", "fp32")
    assert model.config.epochs == 4 and model.resumed_step is None  # a fresh run
    assert model.selection == {
        "split": "train",
        "validation": "validation",
        "where": None,
        "uncertain": "ignore",
        "targets": ["finding_pneumonia"],
    }
    assert not model.network.training
    assert all(
        p.dtype == torch.float32 and p.device.type == "cpu" for p in model.network.parameters()
    )


def test_onnx_export_scores_equal_torch_on_stored_scans(trained, store, tmp_path):
    import json

    import onnx

    model, _ = trained
    path = cnn.export_cnn_onnx(model, tmp_path / "densenet.onnx")
    sidecar = json.loads(Path(f"{path}.json").read_text())
    assert ModelContract.from_dict(sidecar) == model.contract
    proto = onnx.load(str(path))
    assert proto.ir_version == 8 and proto.opset_import[0].version == 18
    assert [i.name for i in proto.graph.input] == ["input"]
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # any batch size
    # The model and its sidecar, nothing else: no temporary file left behind (a
    # writer's "<target>.<hex>.partial"), no external weights ("*.data").
    assert sorted(p.name for p in tmp_path.iterdir()) == ["densenet.onnx", "densenet.onnx.json"]

    scans = ScanStore.open(store).read("preprocessed", list(range(32)))
    expected = cnn.cnn_scores(model.network, scans, model.contract)
    got = OnnxClassifier(str(path)).scores(scans)  # the sidecar contract, as `xray classify`
    assert got.shape == expected.shape == (32,)
    assert np.abs(got - expected).max() < 1e-4


def test_weights_checkpoint_round_trip(trained, store, tmp_path):
    model, _ = trained
    path = cnn.save_checkpoint(model.network, tmp_path / "densenet.pt")
    config = TrainConfig(
        target="finding_pneumonia",
        contract=model.contract,
        weights=path,
        max_steps=0,
        device="cpu",
        seed=1,  # another initialisation: everything must come from the file
    )
    again = cnn.train_cnn(store, config)
    assert again.steps == 0 and again.epochs == []
    mine, theirs = model.network.state_dict(), again.network.state_dict()
    assert mine.keys() == theirs.keys()
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    scans = ScanStore.open(store).read("preprocessed", list(range(8)))
    assert np.array_equal(
        cnn.cnn_scores(again.network, scans, model.contract),
        cnn.cnn_scores(model.network, scans, model.contract),
    )
    # A checkpoint saved as {"state_dict": ...} (Lightning's and many scripts' layout).
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": mine, "epoch": 3}, wrapped)
    network = cnn.build_network(seed=2)
    cnn.load_checkpoint(network, wrapped)
    assert all(torch.equal(network.state_dict()[k], mine[k]) for k in mine)


def test_weights_that_do_not_fit_are_clear_errors(tmp_path):
    network = cnn.build_network()
    with pytest.raises(ValueError, match="does not exist"):
        cnn.load_checkpoint(network, tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a torch state_dict"):
        cnn.load_checkpoint(network, tmp_path / "junk.pt")
    gray = cnn.save_checkpoint(cnn.build_network(channels=1), tmp_path / "gray.pt")
    with pytest.raises(ValueError, match=r"1 of another shape \(features.conv0.weight\)"):
        cnn.load_checkpoint(network, gray)
    state = network.state_dict()
    del state["class_layers.out.weight"]
    state["head.bias"] = torch.zeros(1)
    torch.save(state, tmp_path / "partial.pt")
    with pytest.raises(ValueError, match=r"1 missing \(class_layers.out.weight\); 1 unexpected"):
        cnn.load_checkpoint(network, tmp_path / "partial.pt")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_steps_keep_fp32_weights(store, precision):
    """The autocast and (fp16) gradient-scaler path CUDA takes, run on the CPU."""
    config = TrainConfig(
        target="finding_pneumonia",
        contract=cnn_contract(SIZE),
        batch_size=4,
        max_steps=1,  # fp16 convolutions are slow on a CPU; one step takes the whole path
        validation=None,
        device="cpu",
        precision=precision,
    )
    model = cnn.train_cnn(store, config)
    assert model.precision == precision and model.steps == 1
    assert np.isfinite(model.losses).all()
    assert all(p.dtype == torch.float32 for p in model.network.parameters())


def test_dataloader_workers_prepare_the_same_batches(store):
    from xraycore.train.loader import ScanLoader

    c = cnn_contract(SIZE)
    seen = {}
    for workers in (0, 2):
        loader = ScanLoader(store, batch_size=8, target="finding_pneumonia", shuffle=False)
        batches = _run.run_batches(loader, c, workers=workers, device=torch.device("cpu"))
        seen[workers] = sorted((y.tolist(), x.sum().item()) for x, y, _ in batches)
    assert len(seen[0]) == 4 and seen[0] == seen[2]


def test_device_and_precision_resolution():
    assert cnn.cnn_device("cpu") == ("cpu", "fp32")
    assert cnn.cnn_device("cpu", "bf16") == ("cpu", "bf16")
    if torch.cuda.is_available():
        device, precision = cnn.cnn_device("auto")
        assert device == "cuda" and precision in ("bf16", "fp16")
    else:
        assert cnn.cnn_device("auto") == ("cpu", "fp32")
        with pytest.raises(ValueError, match="sees no GPU"):
            cnn.cnn_device("cuda")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": 0}, "epochs must be an int >= 1"),
        ({"batch_size": 0}, "batch_size must be an int >= 1"),
        ({"lr": 0.0}, "lr must be > 0"),
        ({"workers": -1}, "workers must be an int >= 0"),
        ({"max_steps": -1}, "max_steps must be an int >= 0"),
        ({"arch": "resnet50"}, "arch must be one of"),
        ({"device": "tpu"}, "device must be one of"),
        ({"precision": "fp8"}, "precision must be one of"),
        ({"contract": ModelContract(size=16)}, "size must be >= 32"),
        ({"contract": ModelContract(output="softmax2")}, "sigmoid outputs"),
        ({"weights": "/no/such/weights.pt"}, "weights file /no/such/weights.pt does not exist"),
        ({"split": "test"}, "no rows selected .*split='test'"),
        ({"target": "finding_edema"}, "finding_edema"),
    ],
)
def test_bad_input_is_refused(store, kwargs, match):
    args = {"target": "finding_pneumonia", "contract": cnn_contract(SIZE), "device": "cpu"}
    with pytest.raises(ValueError, match=match):
        cnn.train_cnn(store, TrainConfig(**{**args, **kwargs}))


@pytest.mark.parametrize("kwargs", [{"epochs": 1.5}, {"batch_size": True}, {"lr": "fast"}])
def test_a_number_of_the_wrong_type_is_refused(store, kwargs):
    args = {"target": "finding_pneumonia", "contract": cnn_contract(SIZE), "device": "cpu"}
    with pytest.raises(TypeError, match=f"{next(iter(kwargs))} must be"):
        cnn.train_cnn(store, TrainConfig(**{**args, **kwargs}))
