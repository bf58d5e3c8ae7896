"""Real clusters for the cluster tests: a one-node SLURM (munged, slurmctld and
slurmd from the OS packages, on loopback) and hosts that share nothing (network,
mount, PID and UTS namespaces made by the test and torn down after it).

Both need root and the OS tools; they skip with the reason when either is absent.
CI installs the packages (``.ci/run``) and runs as root, so CI runs them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

# The drills' harness (inputs, clean reference, store checks) is shared, not copied.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "drills"))

from servers import free_port  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
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


NAMESPACE_TOOLS = ("ip", "unshare", "mount", "hostname")


class Host:
    """A machine that shares nothing with the others: its own network namespace
    (one address on the test's bridge), host name, PID namespace, and a /tmp of
    its own (a folder of the test bound over /tmp, so the test can look inside
    afterwards); it sees no other host's /tmp and none of the test's folders."""

    def __init__(self, network: Network, name: str, address: str):
        self.network, self.name, self.address = network, name, address
        self.netns = f"{network.prefix}-{name}"
        self.tmp = network.folder / "hosts" / name
        self.tmp.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []

    def start(self, *command: str, env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
        """Run ``command`` as this host's first process (its PID namespace's init),
        with cwd and TMPDIR its private /tmp; output to the network's log unless
        ``stdout`` is given."""
        # The private folder goes over /tmp; what the host must still run from (the
        # project and its interpreter, when a clone lives under /tmp) is bound back
        # at its own path inside that folder first, in this host's mounts only.
        back = "".join(
            f'mkdir -p "$1/{rel}" && mount --bind "/tmp/{rel}" "$1/{rel}" && '
            for rel in _under_tmp(ROOT, Path(sys.prefix), Path(sys.base_prefix))
        )
        boot = f'hostname "$0" && {back}mount --rbind "$1" /tmp && cd /tmp && shift && exec "$@"'
        unshare = ["unshare", "--uts", "--mount", "--propagation", "private"]
        unshare += ["--pid", "--fork", "--mount-proc"]
        proc = subprocess.Popen(
            ["ip", "netns", "exec", self.netns, *unshare, "sh", "-c", boot, self.name]
            + [str(self.tmp), *command],
            env={**os.environ, "TMPDIR": "/tmp", "HOME": "/tmp", **(env or {})},
            start_new_session=True,
            **{"stdout": self.network.log, "stderr": subprocess.STDOUT, **popen},
        )
        self.procs.append(proc)
        return proc

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def crash(self) -> None:
        """Every process of this host dies at once: SIGKILL to its PID namespaces'
        first processes (the kernel then kills the rest of each namespace)."""
        for proc in self.procs:
            for init in _children(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(init, signal.SIGKILL)
        for pid in self.pids():  # anything left (there should be none)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.procs:
            proc.wait(timeout=30)
            for pipe in (proc.stdout, proc.stderr):
                if pipe is not None:
                    pipe.close()
        self.procs.clear()


def _under_tmp(*paths: Path) -> list[str]:
    """The paths under /tmp (outermost only, relative to /tmp): a host that binds its
    own folder over /tmp would not see them."""
    tmp = Path("/tmp").resolve()
    inside = sorted({p.resolve() for p in paths if p.resolve().is_relative_to(tmp)})
    outer = [p for p in inside if not any(p != q and p.is_relative_to(q) for q in inside)]
    return [str(p.relative_to(tmp)) for p in outer]


def _children(pid: int) -> list[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


class Network:
    """A private network made for one test: a hub namespace holding a bridge with
    10.199.0.1/24, and a veth pair per host from the bridge into the host's
    namespace. The host's own interfaces and routes are never touched: every link
    and address lives in namespaces this class made, and all go at :meth:`close`."""

    SUBNET = "10.199.0"

    def __init__(self, folder: Path):
        self.folder = folder
        self.prefix = f"xr{os.getpid() % 100000}"
        self.hub = f"{self.prefix}-hub"
        self.hosts: dict[str, Host] = {}
        self._namespaces: list[str] = []
        self.log = open(folder / "hosts.log", "a")  # noqa: SIM115 (closed by close())
        self._netns(self.hub)
        self._ip(self.hub, "link", "add", "br0", "type", "bridge")
        self._ip(self.hub, "addr", "add", f"{self.SUBNET}.1/24", "dev", "br0")
        self._ip(self.hub, "link", "set", "br0", "up")

    def _netns(self, name: str) -> None:
        subprocess.run(["ip", "netns", "add", name], check=True)
        self._namespaces.append(name)
        self._ip(name, "link", "set", "lo", "up")

    @staticmethod
    def _ip(netns: str, *args: str) -> None:
        subprocess.run(["ip", "-n", netns, *args], check=True, capture_output=True)

    def add_host(self, name: str) -> Host:
        host = Host(self, name, f"{self.SUBNET}.{len(self.hosts) + 2}")
        self._netns(host.netns)
        veth = f"v-{name}"[:15]
        self._ip(self.hub, "link", "add", veth, "type", "veth", "peer", "name", "eth0")
        self._ip(self.hub, "link", "set", "eth0", "netns", host.netns)
        self._ip(self.hub, "link", "set", veth, "master", "br0", "up")
        self._ip(host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        self._ip(host.netns, "link", "set", "eth0", "up")
        self.hosts[name] = host
        return host

    def in_hub(self, *command: str, env: dict[str, str] | None = None, timeout: float = 120):
        """Run ``command`` on the hub (the bridge's address): the test's own view
        of the network, with the test's folders, for uploads and checks."""
        return subprocess.run(
            ["ip", "netns", "exec", self.hub, *command],
            env={**os.environ, **(env or {})},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def close(self) -> None:
        for host in self.hosts.values():
            host.crash()
        for name in self._namespaces[::-1]:
            subprocess.run(["ip", "netns", "del", name], capture_output=True)
        self.log.close()


@pytest.fixture
def network(tmp_path):
    """A :class:`Network` for one test, torn down after it (skips unless root)."""
    need_root(*NAMESPACE_TOOLS)
    probe = subprocess.run(["unshare", "--net", "--pid", "--fork", "--mount", "true"])
    if probe.returncode != 0:
        pytest.skip("this kernel or container refuses new namespaces (unshare failed)")
    net = Network(tmp_path)
    try:
        yield net
    finally:
        net.close()


@pytest.fixture(autouse=True)
def one_version_per_batch(monkeypatch):
    """Every batch its own group commit (flows/commits.py): these tests wait for a
    committed batch and kill the run before the next."""
    monkeypatch.setenv("XRAY_COMMIT_FIRST_S", "0")
