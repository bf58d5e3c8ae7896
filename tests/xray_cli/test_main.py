"""The CLI's one cluster value and its exit codes, by exception class."""

from __future__ import annotations

import errno
from importlib.metadata import version

import pyarrow as pa
import pytest
import typer

from xray_cli.exits import refused
from xray_cli.main import run_command
from xray_cli.options import cluster_value
from xraycore.store import ShardFormatError, StoreConflictError, StoreFormatError
from xraycore.store.lease import LeaseHeldError, LeaseLostError
from xraycore.store.storage import CredentialsRefusedError

LOCAL = "distributed.LocalCluster"


def test_the_cluster_flags_become_one_value():
    assert cluster_value(None) is None
    assert cluster_value("slurm") == "slurm"
    assert cluster_value("tcp://h:8786", workers=3) == "tcp://h:8786"
    assert cluster_value("local", scheduler="tcp://h:1", workers=2) == {"address": "tcp://h:1"}
    assert cluster_value(None, workers=2) == {
        "cluster_class": LOCAL,
        "cluster_kwargs": {"n_workers": 2},
    }
    assert cluster_value(None, cluster_class="x.Cluster", cluster_kwargs='{"cores": 4}') == {
        "cluster_class": "x.Cluster",
        "cluster_kwargs": {"cores": 4},
    }
    local = cluster_value("local", workers=3)  # the named spec, with --workers on top
    assert local["cluster_class"] == LOCAL and local["cluster_kwargs"]["n_workers"] == 3
    assert local["cluster_kwargs"]["threads_per_worker"] == 1
    assert cluster_value("existing", workers=3) == {"address": "tcp://127.0.0.1:8786"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"workers": 0}, "--workers must be >= 1, got 0"),
        ({"cluster_kwargs": "[1]"}, "--cluster-kwargs must be a JSON object"),
        ({"cluster_kwargs": "{"}, "--cluster-kwargs is not valid JSON"),
    ],
)
def test_bad_cluster_flags(kwargs, message):
    with pytest.raises(typer.BadParameter, match=message):
        cluster_value(None, **kwargs)


@pytest.mark.parametrize(
    "exc",
    [
        CredentialsRefusedError("storage_options holds credentials"),
        LeaseHeldError.__new__(LeaseHeldError),  # its message needs a real lease
        StoreConflictError("another pipeline: --overwrite"),
        StoreFormatError("format 9"),
        FileNotFoundError("/nope does not exist"),
        ValueError("size must be > 0, got -1"),
    ],
)
def test_refusals_exit_2(exc):
    assert refused(exc)


@pytest.mark.parametrize(
    "exc",
    [
        pa.ArrowInvalid("bad parquet footer"),
        ShardFormatError("bad shard index"),
        LeaseLostError("lease taken over"),
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("2 batch(es) failed after retries"),
    ],
)
def test_a_failed_run_exits_1(exc):
    assert not refused(exc)


def test_version_prints_the_installed_distribution(capsys):
    assert run_command(["--version"]) == 0
    assert capsys.readouterr().out == f"xray-pipeline {version('xray-pipeline')}\n"
