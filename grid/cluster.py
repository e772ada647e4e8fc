"""Choosing the dask cluster a grid runs on; the graph does not change with it.

- ``local`` (default): a cluster on this machine — one worker process per visible GPU, each
  with a ``GPU=1`` resource and one task at a time; on a CPU machine, worker processes x torch
  threads that do not oversubscribe the cores (2 cores: 2 workers x 1 thread).
- an existing scheduler (``SCHEDULER=tcp://host:8786``): the user's ``dask scheduler`` and
  ``dask worker --resources GPU=1`` processes, with the data root on a shared filesystem.
- ``slurm``: workers submitted as SLURM jobs through dask-jobqueue (``pip install
  'midprobe[slurm]'``), configured by its ``jobqueue.slurm`` settings.

Worker processes read ``MIDPROBE_THREADS`` for the torch threads of each task, and
:class:`HeapSettings` undoes dask's aggressive memory trimming in them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import ctypes
import os
import sys
from typing import Any, Iterator

import dask
from distributed import Client, LocalCluster, Nanny, Scheduler, SpecCluster
from distributed.diagnostics.plugin import WorkerPlugin

from cache import MidprobeError

CLUSTERS = ("local", "slurm")


def machine_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as ``CUDA_VISIBLE_DEVICES`` entries."""
    import torch

    if not torch.cuda.is_available():
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed:
        return [d.strip() for d in listed.split(",") if d.strip()][:torch.cuda.device_count()]
    return [str(i) for i in range(torch.cuda.device_count())]


def local_layout(cores: int, gpus: int) -> tuple[int, int]:
    """``(worker processes, threads per worker)`` for a machine: one worker per GPU, its share of
    the cores as torch threads; without GPUs, as many workers as keep 1-4 threads each on the
    cores (2 cores: 2 x 1, 8: 2 x 4, 16: 4 x 4)."""
    cores = max(1, cores)
    if gpus:
        return gpus, max(1, cores // gpus)
    workers = min(cores, max(2, cores // 4))
    return workers, max(1, cores // workers)


class PatientNanny(Nanny):
    """A nanny that gives its worker 30 s, not 5, to exit when the cluster closes: a process that
    imported torch and timm takes seconds to tear down on a busy machine, and being killed
    meanwhile only produces alarming warnings."""

    #: seconds a worker gets to exit; a Ctrl-C'd grid sets 2: its stores and records are written
    #: atomically, so a worker killed mid-task leaves nothing half-written
    patience = 30.0

    async def close(self, timeout: float | None = None, reason: str = "nanny-close") -> str:
        return await super().close(timeout=PatientNanny.patience if timeout is None else timeout, reason=reason)


def local_cluster(*, workers: int | None = None, threads: int | None = None, dashboard: str | None = ":8787") -> Any:
    """A cluster of this machine's GPUs (``GPU=1`` each, ``CUDA_VISIBLE_DEVICES`` pinned) or cores;
    ``workers``/``threads`` override the layout."""
    gpus = visible_gpus()
    count, per_worker = local_layout(machine_cores(), len(gpus))
    if workers:
        count, per_worker = workers, max(1, machine_cores() // workers)
    env = {"MIDPROBE_THREADS": str(threads or per_worker)}
    # worker processes log at WARNING: read when a worker starts, so set before it is spawned; their
    # INFO lines (a connection closed as the cluster shuts down) printed after the grid's summary
    with dask.config.set({"distributed.nanny.pre-spawn-environ.DASK_LOGGING__DISTRIBUTED": "warning"}):
        if not gpus:
            return LocalCluster(n_workers=count, threads_per_worker=1, processes=True, dashboard_address=dashboard,
                                worker_class=PatientNanny, env=env)
        specs = {i: {"cls": PatientNanny, "options": {"nthreads": 1, "resources": {"GPU": 1},
                                               "env": {**env, "CUDA_VISIBLE_DEVICES": gpus[i % len(gpus)]}}}
                 for i in range(count)}
        return SpecCluster(workers=specs, scheduler={"cls": Scheduler, "options": {"dashboard_address": dashboard}},
                           name="midprobe")


def slurm_cluster(*, jobs: int, gpus: bool = True) -> Any:
    """SLURM jobs of one worker each, with one GPU (``gpus``; a CPU grid asks for none: a node
    without GRES refuses ``--gres=gpu:1``). Queue, account, walltime, cores and memory come from
    dask-jobqueue's ``jobqueue.slurm`` config (e.g. ``~/.config/dask/jobqueue.yaml``). The cluster
    adapts to ``jobs`` jobs, so a worker job that ends (``scancel``, a node lost) is submitted again
    and the grid's tasks it held are retried."""
    try:
        from dask_jobqueue import SLURMCluster
    except ImportError:
        raise MidprobeError("CLUSTER=slurm needs dask-jobqueue: pip install 'midprobe[slurm]'") from None
    cluster = SLURMCluster(processes=1, job_extra_directives=["--gres=gpu:1"] if gpus else [],
                           worker_extra_args=["--resources", "GPU=1"] if gpus else [])
    cluster.adapt(minimum_jobs=jobs, maximum_jobs=jobs)
    return cluster


@contextlib.contextmanager
def open_client(*, scheduler: str | None = None, cluster: str = "local", workers: int | None = None,
                jobs: int = 1, timeout: float = 120.0, connect_timeout: float = 30.0,
                gpus: bool = True) -> Iterator[Any]:
    """A ``distributed.Client`` on the chosen cluster, closed (with a cluster it started) on exit."""
    if cluster not in CLUSTERS:
        raise MidprobeError(f"cluster {cluster!r}: expected {' or '.join(CLUSTERS)} (or SCHEDULER=tcp://host:port)")
    if scheduler:
        try:
            client = Client(scheduler, timeout=connect_timeout)
        except OSError as exc:
            raise MidprobeError(f"cannot reach the dask scheduler at {scheduler} ({exc}); start one with "
                                "`dask scheduler` and workers with `dask worker <address>`") from None
        started = None
    else:
        if cluster == "slurm":
            started = slurm_cluster(jobs=jobs, gpus=gpus)
        else:
            with interrupts_ignored():
                started = local_cluster(workers=workers)
        client = Client(started)
    try:
        try:
            client.wait_for_workers(1, timeout=timeout)
        except TimeoutError:
            raise MidprobeError(f"no dask worker joined the scheduler {client.scheduler.address} within "
                                f"{timeout:.0f} s") from None
        yield client
    except KeyboardInterrupt:
        # Ctrl-C: the grid's one line, not dask's teardown warnings from a cluster stopped mid-task
        PatientNanny.patience = 2.0
        with contextlib.suppress(Exception):
            client.run(_silence_dask)
        _silence_dask()
        started = None if started is None else _Closing(started)
        raise
    finally:
        if isinstance(started, _Closing):
            started = started.cluster
        elif started is not None:
            # workers first: a worker outliving the scheduler logs a failed heartbeat as an error
            with contextlib.suppress(Exception):
                client.retire_workers(close_workers=True)
        client.close()
        if started is not None:
            started.close()


@dataclasses.dataclass
class _Closing:
    """A cluster being closed after Ctrl-C: its busy workers are not retired one by one."""

    cluster: Any


def _silence_dask() -> None:
    import logging

    logging.getLogger("distributed").setLevel(logging.CRITICAL)


#: glibc ``mallopt`` parameters, and the values glibc's own adaptive thresholds reach at most.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD, TRIM_THRESHOLD = 32 * 2**20, 64 * 2**20


def restore_heap() -> bool:
    """Give back glibc its usual heap behaviour in a process started with dask's
    ``MALLOC_TRIM_THRESHOLD_=65536``: fixing that threshold switches off glibc's adaptive ones,
    so every torch buffer over 128 kB is a fresh ``mmap`` to fault in — probes ran 2.2x slower,
    7x the system time. The thresholds are set to where the adaptive ones settle (32 / 64 MiB).
    True when they were set."""
    if "MALLOC_TRIM_THRESHOLD_" not in os.environ or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:                             # not glibc
        return False
    return libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) == 1 and libc.mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD) == 1


class HeapSettings(WorkerPlugin):
    """Calls :func:`restore_heap` in every worker of the cluster, restarted ones included."""

    name = "midprobe-heap"

    def setup(self, worker: Any) -> None:
        restore_heap()


@contextlib.contextmanager
def interrupts_ignored() -> Iterator[None]:
    """SIGINT ignored while a local cluster's worker processes start, so they inherit that and leave
    Ctrl-C to the grid's own process: they share the terminal's process group, and each one
    interrupted printed a KeyboardInterrupt traceback before the grid's one line (the grid closes
    them itself). Workers of a user's own scheduler are left alone."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def gpu_workers(client: Any) -> int:
    """How many of the cluster's workers offer a ``GPU`` resource."""
    return sum(1 for w in client.scheduler_info()["workers"].values() if (w.get("resources") or {}).get("GPU"))
