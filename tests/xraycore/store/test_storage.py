"""Storage on its own: S3 client retries and timeouts, atomic writes on a full disk."""

from __future__ import annotations

import errno
import os

import pytest

from xraycore.store.storage import S3_CLIENT_CONFIG, Storage


def test_s3_gets_standard_retries_and_timeouts_under_the_callers_own():
    st = Storage.from_url(
        "s3://bucket/store",
        {"endpoint_url": "http://127.0.0.1:9", "config_kwargs": {"read_timeout": 5}},
    )
    assert st.client_config == {**S3_CLIENT_CONFIG, "read_timeout": 5}
    assert S3_CLIENT_CONFIG["retries"] == {"max_attempts": 10, "mode": "standard"}
    assert st.storage_options == {  # what the caller gave (and Prefect records) is unchanged
        "endpoint_url": "http://127.0.0.1:9",
        "config_kwargs": {"read_timeout": 5},
    }
    zarr_fs = st.zarr_store("images.zarr").fs  # Zarr's async client gets the same settings
    assert zarr_fs.config_kwargs == st.client_config


def test_local_storage_has_no_client_config(tmp_path):
    assert "config_kwargs" not in Storage.from_url(str(tmp_path))._options


def test_atomic_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    st = Storage.from_url(str(tmp_path))
    st.write_bytes_atomic("d/kept.bin", b"old")

    def full(*args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", full)
    with pytest.raises(OSError, match="No space left"):
        st.write_bytes_atomic("d/kept.bin", b"new")
    assert sorted(p.name for p in (tmp_path / "d").iterdir()) == ["kept.bin"]
    assert (tmp_path / "d" / "kept.bin").read_bytes() == b"old"


def test_a_client_cannot_change_the_defaults_of_the_next():
    import botocore.session
    from botocore.config import Config

    st = Storage.from_url("s3://bucket/store", {"endpoint_url": "http://127.0.0.1:9"})
    # Creating a client rewrites the retries dict of its config in place (no request
    # is sent: the endpoint is a closed loopback port).
    botocore.session.get_session().create_client(
        "s3",
        region_name="us-east-1",
        endpoint_url="http://127.0.0.1:9",
        config=Config(**st.client_config),
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    assert S3_CLIENT_CONFIG["retries"] == {"max_attempts": 10, "mode": "standard"}


@pytest.mark.parametrize("portable", [False, True], ids=["writev", "no-writev-no-fadvise"])
def test_durable_write_puts_the_parts_in_order_through_short_writes(
    tmp_path, monkeypatch, portable
):
    import numpy as np

    parts = [np.arange(n, dtype=np.uint16) for n in (0, 1, 5000, 3)] + [b"", bytearray(b"xyz")]
    parts += [bytes([i % 256]) * 7 for i in range(1500)]  # more than one writev's worth
    expected = b"".join(bytes(memoryview(p).cast("B")) for p in parts)
    if portable:  # as on Windows / macOS
        monkeypatch.delattr(os, "writev")
        monkeypatch.delattr(os, "posix_fadvise")
    else:  # the kernel may write less than asked: the rest must follow
        real = os.writev

        def short(fd, views):  # at most half of the first buffer (at least a byte)
            first = views[0]
            return real(fd, [first[: max(1, len(first) // 2)]] if len(first) else views[:1])

        monkeypatch.setattr(os, "writev", short)
    st = Storage.from_url(str(tmp_path))
    st.write_durably("a/b/shard", parts)
    assert (tmp_path / "a" / "b" / "shard").read_bytes() == expected
    assert os.listdir(tmp_path / "a" / "b") == ["shard"]


def test_durable_write_that_fails_leaves_nothing_behind(tmp_path, monkeypatch):
    st = Storage.from_url(str(tmp_path))
    st.write_durably("d/kept", [b"old"])

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        st.write_durably("d/kept", [b"new"])
    assert os.listdir(tmp_path / "d") == ["kept"]
    assert (tmp_path / "d" / "kept").read_bytes() == b"old"


def _read_ranges_on(st: Storage) -> None:
    """read_ranges gives what slicing the whole files gives, None for an absent one."""
    files = {f"f{i}.bin": os.urandom(1000 + 997 * i) for i in range(40)}
    for rel, data in files.items():
        st.write_bytes_atomic(rel, data)
    rels = [*files, "gone.bin"]
    starts = [i % 3 * 100 for i in range(len(rels))]
    ends = [5000 + 13 * i for i in range(len(rels))]  # some past a file's end
    got = st.read_ranges(rels, starts, ends)
    expected = [files[r][s:e] for r, s, e in zip(rels[:-1], starts, ends, strict=False)]
    assert got == [*expected, None]
    assert st.read_ranges([], [], []) == []


def test_read_ranges_local(tmp_path):
    _read_ranges_on(Storage.from_url(str(tmp_path)))


def test_read_ranges_s3(s3_server):
    import uuid

    bucket = Storage.from_url(f"s3://ranges-{uuid.uuid4().hex[:8]}")
    bucket.makedirs()
    _read_ranges_on(bucket.child("in"))


def test_read_ranges_needs_one_start_and_end_per_path(tmp_path):
    with pytest.raises(ValueError, match="one entry each, got 2, 1, 2"):
        Storage.from_url(str(tmp_path)).read_ranges(["a", "b"], [0], [1, 2])
