"""Real clusters for the cluster tests: a one-node SLURM (munged, slurmctld and
slurmd from the OS packages, on loopback) and hosts that share nothing (network,
mount, PID and UTS namespaces made by the test and torn down after it).

Both need root and the OS tools; they skip with the reason when either is absent.
CI installs the packages (``.ci/run``) and runs as root, so CI runs them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The drills' harness (inputs, clean reference, store checks) is shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drills"))

from harness import free_port  # noqa: E402


@pytest.fixture(scope="session")
def prefect_api_url(tmp_path_factory) -> str:
    """One real Prefect API server (SQLite) on loopback for this directory's runs:
    each ``xray run`` would otherwise start (and migrate) its own."""
    from prefect.server.api.server import SubprocessASGIServer

    home = tmp_path_factory.mktemp("prefect")
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    saved = os.environ.get("PREFECT_HOME")
    os.environ["PREFECT_HOME"] = str(home)
    server = SubprocessASGIServer(port=free_port())
    try:
        server.start(timeout=120)
        yield server.api_url
    finally:
        server.stop()
        if saved is None:
            os.environ.pop("PREFECT_HOME", None)
        else:
            os.environ["PREFECT_HOME"] = saved


SLURM_BINARIES = ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue", "scancel")


def need_root(*binaries: str) -> None:
    """Skip, saying why, unless this process is root and every binary is installed."""
    if os.geteuid() != 0:
        pytest.skip("needs root (daemons and namespaces); CI runs as root")
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (CI: apt-get install slurm-wlm munge)")


@dataclass
class Slurm:
    """A running one-node SLURM: ``env`` holds SLURM_CONF for its commands."""

    conf: Path
    env: dict[str, str]
    folder: Path

    def squeue(self) -> list[str]:
        """Job ids still known to slurmctld as pending, running or completing."""
        out = subprocess.run(
            ["squeue", "-h", "-o", "%i %T"],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return out.split("\n") if out.strip() else []

    def run(self, *command: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            command, env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30
        )


SLURM_CONF = """\
ClusterName=xraytest
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={munge_socket}
CredType=cred/munge
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
ReturnToService=2
# Quick turnaround for tests: short waits before a kill, finished jobs forgotten soon.
KillWait=2
MinJobAge=2
InactiveLimit=0
SchedulerParameters=sched_interval=1
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=2000 State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
# A partition that never runs anything: jobs sent there stay pending.
PartitionName=closed Nodes=localhost MaxTime=INFINITE State=DOWN
"""


@pytest.fixture(scope="session")
def slurm(tmp_path_factory):
    """munged, slurmctld and slurmd in the foreground on 127.0.0.1, for this session.

    The munge key is generated here (never /etc/munge's): this munged serves only
    these daemons, on its own socket.
    """
    need_root(*SLURM_BINARIES)
    folder = tmp_path_factory.mktemp("slurm")
    folder.chmod(0o700)
    for sub in ("state", "spool", "munge"):
        (folder / sub).mkdir(mode=0o700)
    key, socket = folder / "munge" / "munge.key", folder / "munge" / "munge.socket"
    subprocess.run(["mungekey", "--create", "--keyfile", str(key)], check=True)
    conf = folder / "slurm.conf"
    conf.write_text(
        SLURM_CONF.format(
            ctld_port=free_port(), slurmd_port=free_port(), munge_socket=socket, folder=folder
        )
    )
    env = {"SLURM_CONF": str(conf)}
    log = open(folder / "daemons.log", "w")  # noqa: SIM115 (closed at teardown)
    daemons = []

    def start(*command: str) -> None:
        daemons.append(
            subprocess.Popen(
                command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **env}
            )
        )

    try:
        start(
            "munged", "--foreground", "--force", f"--key-file={key}", f"--socket={socket}",
            f"--pid-file={folder / 'munge' / 'munged.pid'}",
            f"--log-file={folder / 'munge' / 'munged.log'}",
            f"--seed-file={folder / 'munge' / 'munged.seed'}",
        )  # fmt: skip
        _wait_for(socket.exists, 20, "munged's socket", daemons, folder)
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-N", "localhost", "-f", str(conf))
        slurm = Slurm(conf=conf, env=env, folder=folder)

        def node_idle() -> bool:
            res = slurm.run("sinfo", "-h", "-p", "debug", "-o", "%t")
            return res.returncode == 0 and res.stdout.strip() == "idle"

        _wait_for(node_idle, 60, "the SLURM node to be idle", daemons, folder)
        yield slurm
    finally:
        for proc in daemons[::-1]:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        log.close()


def _wait_for(predicate, timeout: float, what: str, daemons, folder: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        dead = [p.args[0] for p in daemons if p.poll() is not None]
        if dead:
            break
        time.sleep(0.2)
    logs = "\n".join(
        f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(folder.rglob("*.log"))
    )
    raise RuntimeError(f"SLURM did not start: waited for {what}\n{logs}")
