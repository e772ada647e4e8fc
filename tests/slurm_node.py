"""A real one-node SLURM (Debian's slurm-wlm and munge) on 127.0.0.1 for the grid's SLURM tests.

:func:`start_slurm` writes a ``slurm.conf`` under a temporary folder (free ports, no cgroup plugins:
the configuration of ``reference/slurm_single_node.md``), starts munged (unless one runs), slurmctld
and slurmd as root, and waits for the node to be idle; :func:`stop_slurm` stops what it started, by
the pids in their pid files. Either returns a one-line reason why SLURM cannot run here instead.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scancel")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _munge_ok() -> bool:
    try:
        made = subprocess.run(["munge", "-n"], capture_output=True, timeout=10)
        return made.returncode == 0 and subprocess.run(["unmunge"], input=made.stdout, capture_output=True,
                                                       timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def start_slurm(folder: Path) -> tuple[dict[str, str], list[Path]] | str:
    """``(environment with SLURM_CONF, pid files to stop)`` or the reason SLURM cannot start."""
    missing = [b for b in BINARIES if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing: apt-get install slurm-wlm munge)"
    if os.geteuid() != 0:
        return "a one-node SLURM is started as root here, and this test runs as another user"
    if not Path("/etc/munge/munge.key").exists():
        return "munge has no key at /etc/munge/munge.key"
    pids: list[Path] = []
    if not _munge_ok():
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        subprocess.run(["munged", "--force", "--pid-file", str(folder / "munged.pid")], capture_output=True)
        pids.append(folder / "munged.pid")
        if not _munge_ok():
            stop_slurm(pids)
            return "munged did not start (munge -n | unmunge fails)"
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    conf = folder / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=midprobe", f"SlurmctldHost={host}(127.0.0.1)", "SlurmUser=root",
        f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}", "AuthType=auth/munge",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "JobAcctGatherType=jobacct_gather/none",
        "SelectType=select/cons_tres", "SelectTypeParameters=CR_Core", "ReturnToService=2",
        f"StateSaveLocation={folder}/state", f"SlurmdSpoolDir={folder}/spool",
        f"SlurmctldPidFile={folder}/slurmctld.pid", f"SlurmdPidFile={folder}/slurmd.pid",
        f"SlurmctldLogFile={folder}/slurmctld.log", f"SlurmdLogFile={folder}/slurmd.log",
        f"NodeName={host} NodeAddr=127.0.0.1 CPUs={min(os.cpu_count() or 1, 2)} RealMemory=8000 State=UNKNOWN",
        f"PartitionName=main Nodes={host} Default=YES MaxTime=INFINITE State=UP", ""]))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    pids += [folder / "slurmctld.pid", folder / "slurmd.pid"]
    subprocess.run(["slurmctld", "-c", "-f", str(conf)], env=env, capture_output=True)
    subprocess.run(["slurmd", "-f", str(conf)], env=env, capture_output=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = subprocess.run(["sinfo", "-h", "-o", "%t"], env=env, capture_output=True, text=True).stdout.strip()
        if state == "idle":
            return env, pids
        time.sleep(0.5)
    stop_slurm(pids)
    return f"the SLURM node did not become idle within 30 s (see {folder}/slurmctld.log)"


def stop_slurm(pids: list[Path]) -> None:
    """Stop the daemons :func:`start_slurm` started, newest first, by their pid files."""
    for pid_file in reversed(pids):
        try:
            os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
        except (OSError, ValueError):
            pass
