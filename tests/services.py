"""Real services for the tests, started on loopback under a temporary folder and stopped after.

PostgreSQL (shared sweep studies) and a one-node Slurm cluster (munged, slurmctld, slurmd) come from
Debian's packages, which `.ci/run` installs where they are absent; without them the tests that need
them skip, saying why.
"""

from __future__ import annotations

import glob
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

_SBIN = os.pathsep.join(["/usr/sbin", "/sbin", os.environ.get("PATH", "")])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_bin() -> Path | None:
    found = shutil.which("initdb")
    candidates = ([found] if found else []) + sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    return Path(candidates[-1]).resolve().parent if candidates else None


@pytest.fixture(scope="module")
def postgres_url():
    pg = _pg_bin()
    if pg is None:
        pytest.skip("PostgreSQL server (initdb, pg_ctl) not installed; .ci/run installs Debian's "
                    "postgresql package")
    base = Path(tempfile.mkdtemp(prefix="benchmark-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        shutil.chown(base, "postgres")
        base.chmod(0o755)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = base / "data", free_port()

    def pg_run(*args: str) -> None:
        subprocess.run(as_user + [str(pg / args[0]), *args[1:]], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=120)

    pg_run("initdb", "-D", str(data), "-U", "bench", "--auth=trust", "-E", "UTF8")
    pg_run("pg_ctl", "-D", str(data), "-l", str(base / "server.log"), "-w", "-o",
           f"-p {port} -k {base} -c listen_addresses=127.0.0.1", "start")
    try:
        yield f"postgresql://bench@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(as_user + [str(pg / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


@dataclass
class SlurmCluster:
    base: Path
    conf: Path
    node: str

    @property
    def env(self) -> dict[str, str]:
        """The environment of a client of this cluster (its jobs inherit it through sbatch)."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def run(self, *cmd: str, check: bool = True) -> str:
        done = subprocess.run(list(cmd), env=self.env, capture_output=True, text=True, timeout=60)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(cmd)} failed: {done.stderr}")
        return done.stdout

    def queue(self) -> dict[str, tuple[str, str]]:
        """Job id -> (state, reason), array tasks one per line."""
        lines = self.run("squeue", "--noheader", "--array", "--format=%i|%T|%r").splitlines()
        return {p[0]: (p[1], p[2]) for p in (line.strip().split("|") for line in lines) if p[0]}

    def logs(self) -> str:
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.base.glob("*.log")))


def _slurm_conf(base: Path, node: str, cpus: int, memory_mb: int) -> str:
    """One node on loopback; no cgroups, no accounting database (squeue, not sacct, tells the
    states); every job gets 1 CPU and 2 GB unless it asks."""
    return f"""\
ClusterName=benchtest
SlurmctldHost={node}
SlurmUser=root
SlurmdUser=root
SlurmctldPort={free_port()}
SlurmdPort={free_port()}
AuthType=auth/munge
AuthInfo=socket={base}/munge.sock
StateSaveLocation={base}/state
SlurmdSpoolDir={base}/spool
SlurmctldPidFile={base}/slurmctld.pid
SlurmdPidFile={base}/slurmd.pid
SlurmctldLogFile={base}/slurmctld.log
SlurmdLogFile={base}/slurmd.log
ProctrackType=proctrack/pgid
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={base}/jobcomp.txt
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
DefMemPerCPU=2000
MpiDefault=none
ReturnToService=2
SlurmctldTimeout=30
SlurmdTimeout=30
KillWait=5
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory={memory_mb} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def slurm_cluster():
    """A real one-node Slurm cluster on this machine: munged, slurmctld and slurmd from Debian's
    packages, configured and run under a temporary folder, stopped after the module."""
    needed = {name: shutil.which(name, path=_SBIN)
              for name in ("munged", "mungekey", "slurmctld", "slurmd", "sbatch", "squeue",
                           "scancel", "scontrol", "sinfo")}
    missing = [name for name, path in needed.items() if path is None]
    if missing:
        pytest.skip(f"Slurm not installed ({', '.join(missing)} missing); .ci/run installs "
                    "Debian's slurmctld, slurmd, slurm-client and munge")
    if os.geteuid() != 0:
        pytest.skip("slurmd must run as root to start jobs as their user (CI runs as root)")
    base = Path(tempfile.mkdtemp(prefix="bslurm-"))  # short: munge's socket path has a length cap
    base.chmod(0o700)
    for sub in ("state", "spool"):
        (base / sub).mkdir()
    node = socket.gethostname().split(".")[0]
    conf = base / "slurm.conf"
    conf.write_text(_slurm_conf(base, node, cpus=os.cpu_count() or 2, memory_mb=8000))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    started: list[Path] = []
    try:
        subprocess.run([needed["mungekey"], "-c", "-k", str(base / "munge.key")], check=True,
                       capture_output=True, timeout=30)
        subprocess.run([needed["munged"], f"--socket={base}/munge.sock",
                        f"--key-file={base}/munge.key", f"--pid-file={base}/munged.pid",
                        f"--log-file={base}/munged.log", f"--seed-file={base}/munged.seed",
                        "--force"], check=True, capture_output=True, timeout=30)
        started.append(base / "munged.pid")
        for daemon in ("slurmctld", "slurmd"):
            subprocess.run([needed[daemon]], env=env, check=True, capture_output=True, timeout=60)
            started.insert(0, base / f"{daemon}.pid")
        cluster = SlurmCluster(base, conf, node)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            state = cluster.run("sinfo", "--noheader", "--format=%T", check=False).strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            raise AssertionError(f"the Slurm node never became idle ({state!r})\n{cluster.logs()}")
        yield cluster
    finally:
        if (base / "slurmctld.pid").is_file():
            subprocess.run(["scancel", "--full", "--user", "root"], env=env, capture_output=True,
                           timeout=30)
        for pid_file in started:
            _stop(pid_file)
        shutil.rmtree(base, ignore_errors=True)
