"""Dask workers in containers from the project image: a real ``dask scheduler`` on
the host, two ``dask worker`` containers joining it over loopback (the host's
network), ``xray run --scheduler`` on the host.

1. Real scans (when ../shared is there) and generated ones into the moto S3 server,
   the workers as the image's own user; then into a local store mounted into the
   containers at its own path, the workers as the host's user (they write the
   host's folder): every row ok, pixels equal a run without containers, verify clean.
2. The killed-worker drill in containers: ``podman kill`` of a worker container inside
   a batch; the run completes on the other, nothing lost or duplicated.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
import uuid

import pytest
from harness import (
    AWS_ENV,
    BATCH,
    assert_store_complete,
    clean_reference,
    committed_batches,
    wait_for,
    worker_inside_a_batch,
    write_phantoms,
    xray,
    xray_popen,
)
from real_data import CHESTXRAY8

# Host and image have the same packages (requirements/lock.txt and image.txt pin
# the same versions; the first test checks it) on two Pythons: the host's and
# Debian 12's 3.11.2. distributed warns of the Python patch release.
pytestmark = pytest.mark.filterwarnings("ignore::distributed.versions.VersionMismatchWarning")

#: The image's user (deploy/Dockerfile).
IMAGE_UID = 10001
N_GENERATED, SOURCE_SIZE, SIZE = 24, 256, 128


@pytest.fixture
def scheduler(tmp_path, start_dask_processes):
    """A ``dask scheduler`` process on the host's loopback, with no worker of its own."""
    with start_dask_processes(tmp_path, workers=0) as (address, _):
        yield address


def start_workers(containers, client, address: str, names: tuple[str, ...], **options) -> list:
    """``dask worker`` containers joining ``address`` (each with its nanny, one thread,
    named as its container); returns their names once all are in the scheduler."""
    started = []
    for name in names:
        full = f"{containers.prefix}-{name}"
        started.append(
            containers.start(
                name, "dask", "worker", address, "--nthreads", "1", "--no-dashboard",
                "--host", "127.0.0.1", "--name", full, **options,
            )
        )  # fmt: skip

    def joined():
        present = {w["name"] for w in client.scheduler_info()["workers"].values()}
        return set(started) <= present

    try:
        wait_for(joined, 120, "the worker containers to join the scheduler", poll=0.5)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{containers.all_logs()}") from None
    return started


def workers_gone(client, names) -> None:
    def gone():
        present = {w["name"] for w in client.scheduler_info()["workers"].values()}
        return not present & set(names)

    wait_for(gone, 60, "the removed worker containers to leave the scheduler", poll=0.5)


def source_with_real_scans(folder) -> int:
    """Generated scans in ``folder``, and copies of the real ones when ../shared is
    there (copies: a link to a folder not mounted in the containers would not
    resolve there). Returns how many real scans went in."""
    write_phantoms(folder, N_GENERATED, size=SOURCE_SIZE)
    real = sorted(CHESTXRAY8.glob("*.png")) if CHESTXRAY8.is_dir() else []
    for path in real:
        shutil.copyfile(path, folder / path.name)
    return len(real)


def test_worker_containers_fill_an_s3_and_a_local_store_as_a_run_without_containers(
    tmp_path, containers, scheduler, s3_server, capsys
):
    import s3fs
    from distributed import Client

    t0 = time.monotonic()
    source, stores = tmp_path / "source", tmp_path / "stores"
    stores.mkdir()
    real = source_with_real_scans(source)
    n = N_GENERATED + real
    reference = clean_reference(source, tmp_path / "reference", size=SIZE)
    s3_env = {**AWS_ENV, "AWS_ENDPOINT_URL": s3_server}
    bucket = f"containers-{uuid.uuid4().hex[:8]}"
    s3fs.S3FileSystem(endpoint_url=s3_server, key="testing", secret="testing").mkdir(bucket)
    args = ["--size", str(SIZE), "--batch-size", "4", "--scheduler", scheduler]

    with Client(scheduler, timeout=30) as client:
        # S3: the workers need no host folder but the source's, as the image's user.
        names = start_workers(containers, client, scheduler, ("s3-1", "s3-2"),
                              read=(source,), env=s3_env)  # fmt: skip
        assert set(client.run(os.getuid).values()) == {IMAGE_UID}
        versions = client.get_versions()
        for worker in versions["workers"].values():
            theirs = {k: v for k, v in worker["packages"].items() if k != "python"}
            ours = {k: v for k, v in versions["client"]["packages"].items() if k != "python"}
            assert theirs == ours, "the image's packages differ from the host's lock"
        s3_store = f"s3://{bucket}/store"
        res = xray("run", str(source), "--store", s3_store, *args, env=s3_env, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        containers.remove(*names)
        workers_gone(client, names)

        # A local store: the same path inside and out, written as the host's user.
        names = start_workers(containers, client, scheduler, ("disk-1", "disk-2"),
                              read=(source,), write=(stores,), as_host_user=True)  # fmt: skip
        local = stores / "local"
        res = xray("run", str(source), "--store", str(local), *args, timeout=300)
        assert res.returncode == 0, res.stdout + res.stderr
        # The scheduler had no worker but the containers: they did every batch.
        done_by = {w["name"] for w in client.scheduler_info()["workers"].values()}

    s3_figures = assert_store_complete(
        s3_store, reference, env=s3_env, options={"endpoint_url": s3_server}
    )
    figures = assert_store_complete(str(local), reference)
    assert s3_figures["rows"] == figures["rows"] == n
    assert done_by == set(names)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nCONTAINERS dask workers: {real} real + {N_GENERATED} generated scans by two "
            f"worker containers of {containers.image.tag} into S3 (uid {IMAGE_UID}) and a "
            f"mounted local store: rows {figures['rows']}/{n} ok in each, pixels equal a run "
            f"without containers, verify clean; {seconds:.1f} s\n  image: "
            f"{containers.image.summary} (fixture {containers.image.seconds:.0f} s)"
        )


#: As tests/drills/test_killed_worker.py: a batch of 16 full-size scans to 512 takes a
#: worker ~0.6 s, long enough to be caught in the middle.
KILL_SOURCE_SIZE, KILL_SIZE, KILL_N = 1024, 512, 64


def test_worker_container_killed_mid_batch_loses_nothing(
    tmp_path, containers, scheduler, capsys, monkeypatch
):
    from distributed import Client

    # Every batch its own commit (flows/commits.py), as in the drills: the kill comes
    # after a first committed batch, which a run's default groups would hold back.
    monkeypatch.setenv("XRAY_COMMIT_FIRST_S", "0")
    t0 = time.monotonic()
    source, stores = tmp_path / "source", tmp_path / "stores"
    stores.mkdir()
    write_phantoms(source, KILL_N, size=KILL_SOURCE_SIZE)
    store = stores / "store"
    with Client(scheduler, timeout=30) as client:
        names = start_workers(containers, client, scheduler, ("w1", "w2"), read=(source,),
                              write=(stores,), as_host_user=True)  # fmt: skip
        proc = xray_popen(
            "run", str(source), "--store", str(store), "--size", str(KILL_SIZE),
            "--batch-size", str(BATCH), "--scheduler", scheduler,
        )  # fmt: skip

        try:
            victim = wait_for(
                lambda: worker_inside_a_batch(client, store),
                90,
                "a worker container inside a batch",
                poll=0.005,
            )
        except AssertionError as exc:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError(f"{exc}; the run said:\n{proc.communicate()[0]}") from None
        time.sleep(0.1)  # into the batch, not at its first line
        in_flight = client.processing()[victim]
        name = client.scheduler_info()["workers"][victim]["name"]
        containers.kill(name)
        killed_at = len(committed_batches(store))
        output, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, output
    assert containers.state(name) == "exited"
    assert name in names
    assert any("process_batch" in str(k) for k in in_flight)
    reference = clean_reference(source, tmp_path / "reference", size=KILL_SIZE)
    figures = assert_store_complete(str(store), reference)
    seconds = time.monotonic() - t0
    with capsys.disabled():
        print(
            f"\nCONTAINERS killed worker: podman kill {name} inside a batch after {killed_at} "
            f"of {KILL_N // BATCH} batches committed; rows {figures['rows']}/{KILL_N}, lost 0, "
            f"duplicated 0; {seconds:.1f} s"
        )
