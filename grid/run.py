"""Running a grid on a dask client: progress with an ETA, a summary, per-task logs.

Every job's outcome is gathered as it completes; one that raised (after dask's retries) counts
as failed with its one-line reason, and jobs that needed it as blocked — the rest go on. The
report runs once the probes are over. The summary lists each failed or blocked job and is also
written to ``<data>/logs/grid/summary.txt``.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from cache import DataRoot, MidprobeError
from grid.graph import Job, plan_grid_jobs, submit_jobs
from grid.jobs import Outcome, blocked_by
from grid.spec import GridSpec

STATUSES = ("done", "skipped", "failed", "blocked")
#: Seconds every extraction or probe spends before its real work, for the ETA's weights.
TASK_OVERHEAD_S = 3.0


@dataclass
class Summary:
    """The outcome of every job, by name, in the graph's order."""

    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0

    def count(self, status: str) -> int:
        return sum(o.status == status for o in self.outcomes.values())

    @property
    def ok(self) -> bool:
        return not (self.count("failed") or self.count("blocked"))

    def text(self, spec: GridSpec, labels: dict[str, str], log_dir: Path) -> str:
        counts = ", ".join(f"{self.count(s)} {s}" for s in STATUSES)
        lines = [f"grid {spec.name}: {len(self.outcomes)} tasks: {counts} in {_clock(self.seconds)}"]
        for name, outcome in self.outcomes.items():
            if outcome.status in ("failed", "blocked"):
                lines.append(f"  {outcome.status:<7} {labels.get(name, name)}: {outcome.reason}")
        lines.append(f"logs: {log_dir}")
        return "\n".join(lines)


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    return f"{seconds // 60}m{seconds % 60:02d}s"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:300]}" if text else type(exc).__name__


class _Progress:
    """``[grid] 7/31 done   extract ... (12.3 s) | elapsed 1m10s, ETA 4m10s``. The ETA is the
    estimated cost of the jobs left, converted to seconds at the rate finished jobs of the same
    kind ran (their durations over their estimated costs), spread over the workers."""

    def __init__(self, jobs: list[Job], costs: dict[str, float], workers: int, out: TextIO) -> None:
        self.total, self.costs, self.workers, self.out = len(jobs), costs, max(1, workers), out
        self.left: Counter = Counter()
        for job in jobs:
            self.left[job.kind] += costs.get(job.name, 0.0)
        self.spent, self.measured = Counter(), Counter()
        self.started = time.perf_counter()
        self.count = 0

    def _eta(self) -> str:
        rates = {kind: self.spent[kind] / self.measured[kind] for kind in self.measured if self.measured[kind] > 0}
        if not rates or self.count >= self.total:
            return "-"
        fallback = sum(self.spent.values()) / sum(self.measured.values())
        left = sum(max(cost, 0.0) * rates.get(kind, fallback) for kind, cost in self.left.items())
        return _clock(left / self.workers)

    def update(self, job: Job, outcome: Outcome) -> None:
        self.count += 1
        cost = self.costs.get(job.name, 0.0)
        self.left[job.kind] -= cost
        if outcome.status == "done" and cost > 0:
            self.spent[job.kind] += outcome.seconds
            self.measured[job.kind] += cost
        elapsed = time.perf_counter() - self.started
        eta = self._eta()
        took = f" ({outcome.seconds:.1f} s)" if outcome.status == "done" else ""
        why = f": {outcome.reason}" if outcome.status in ("failed", "blocked") else ""
        print(f"[grid] {self.count}/{self.total} {outcome.status:<7} {job.task.label}{took}{why} | "
              f"elapsed {_clock(elapsed)}, ETA {eta}", file=self.out, flush=True)


def run_grid(spec: GridSpec, *, root: DataRoot, client: Any, out: TextIO = sys.stdout) -> Summary:
    """Run every job of ``spec`` on ``client``'s cluster; complete work is skipped."""
    from distributed import as_completed

    from grid.cluster import HeapSettings, gpu_workers
    from grid.plan import Estimator

    gpus = gpu_workers(client)
    if "cuda" in (spec.device, spec.probe_device) and not gpus:
        raise MidprobeError(f"grid {spec.name} runs on cuda but no worker offers a GPU resource; start workers "
                            "with `dask worker ... --resources GPU=1` (or set device = \"cpu\" / DEVICE=cpu)")
    client.register_plugin(HeapSettings())
    jobs = plan_grid_jobs(spec, root)
    by_name = {job.name: job for job in jobs}
    log_dir = root.root / "logs" / "grid"
    root.ensure_writable(log_dir)
    estimator = Estimator(spec, root, device="cuda" if gpus else "cpu")
    costs = {job.name: _cost(estimator, job) for job in jobs}
    workers = len(client.scheduler_info()["workers"])
    print(f"[grid] {spec.name}: {len(jobs)} tasks, {spec.precision} features, on {workers} worker(s) "
          f"({gpus} with a GPU); dashboard {_dashboard(client)}; logs {log_dir}", file=out, flush=True)
    progress = _Progress(jobs, costs, workers, out)
    summary = Summary()
    futures = submit_jobs(client, jobs, log_dir=str(log_dir), token=uuid.uuid4().hex[:8], gpus=bool(gpus),
                          costs=costs)
    names = {future.key: name for name, future in futures.items()}
    outcomes: dict[str, Outcome] = {}
    try:
        for future in as_completed(list(futures.values())):
            name = names[future.key]
            outcome = _gather(future, name, by_name[name], outcomes)
            outcomes[name] = outcome
            progress.update(by_name[name], outcome)
        for job in jobs:
            if job.kind == "report":
                outcome = _report(client, job, str(log_dir), outcomes)
                outcomes[job.name] = outcome
                progress.update(job, outcome)
    finally:
        client.cancel(list(futures.values()))
    for job in jobs:                            # a cascade of dask errors may arrive before its cause
        stopped = [outcomes[d] for d in job.deps if outcomes.get(d) and outcomes[d].status in ("failed", "blocked")]
        if stopped and job.name in outcomes and outcomes[job.name].status == "failed":
            outcomes[job.name] = blocked_by(job.name, stopped[0])
    summary.outcomes = {job.name: outcomes[job.name] for job in jobs if job.name in outcomes}
    summary.seconds = time.perf_counter() - progress.started
    text = summary.text(spec, {job.name: job.task.label for job in jobs}, log_dir)
    (log_dir / "summary.txt").write_text(text + "\n")
    print(text, file=out, flush=True)
    if summary.outcomes.get("report") and summary.outcomes["report"].status in ("done", "skipped"):
        print(f"report: {root.reports() / 'report.md'}", file=out, flush=True)
    return summary


def _dashboard(client: Any) -> str:
    try:
        return client.dashboard_link or "off"
    except (KeyError, AttributeError):          # a scheduler started without a dashboard
        return "off"


def _cost(estimator: Any, job: Job) -> float:
    """The job's estimated seconds, plus a few for what every extraction or probe does first
    (imports, building the model, opening stores)."""
    if job.kind not in ("extract", "probe"):
        return 0.0
    try:
        return estimator.job(job).seconds + TASK_OVERHEAD_S
    except MidprobeError:
        return TASK_OVERHEAD_S                  # an unsizable dataset: the job reports its own error


def _gather(future: Any, name: str, job: Job, outcomes: dict[str, Outcome]) -> Outcome:
    """The job's outcome; an exception is this job's failure, or a blocked dependency's."""
    try:
        return future.result()
    except Exception as exc:
        stopped = [outcomes[d] for d in job.deps if d in outcomes and outcomes[d].status in ("failed", "blocked")]
        return blocked_by(name, stopped[0]) if stopped else Outcome(name, "failed", _one_line(exc))


def _report(client: Any, job: Job, log_dir: str, outcomes: dict[str, Outcome]) -> Outcome:
    """The report, once the probes are over, if any probe's records exist."""
    from grid.jobs import execute

    readers = ("probe-", "lockstep-")
    if not any(o.status in ("done", "skipped") for name, o in outcomes.items() if name.startswith(readers)):
        return Outcome(job.name, "blocked", "no probe succeeded")
    future = client.submit(execute, job.task, job.name, log_dir, key=f"{job.name}-{uuid.uuid4().hex[:8]}", pure=False)
    try:
        return future.result()
    except Exception as exc:
        return Outcome(job.name, "failed", _one_line(exc))
    finally:
        future.release()
