"""Optional experiment tracking: ``python -m probe --log tensorboard`` (``make probe LOG=tensorboard``).

Per probe, TensorBoard event files under
``<data>/logs/tensorboard/<protocol>/<task>/<dataset>/<model>/<probe>-seed<seed>/`` (the stem of its
record's file: a study's subsets, corrupted test splits and seeds each get their own) hold its training loss
and learning rate at every optimiser step (``train/loss``, ``train/lr``, steps 1-based), its final
test metrics at the last step (``test/<metric>``; zero-shot probes at step 0) and its configuration
as text (``config``). Rerunning a probe replaces its events, as it replaces its record. View them
with ``tensorboard --logdir data/logs/tensorboard``. Needs the optional extra
``midprobe[tensorboard]``.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Mapping, NamedTuple

from cache import DataRoot, MidprobeError


class ProbeId(NamedTuple):
    """Which probe a log belongs to: the parts of its record's path (``probe``: its key under the
    study's conditions, :func:`probe.run.condition_key`)."""

    protocol: str
    task: str
    dataset: str
    model: str
    probe: str
    seed: int


def _part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+@=-]", "_", name)


class TensorBoardLog:
    """One TensorBoard run per probe, written through torch's ``SummaryWriter``."""

    def __init__(self, root: DataRoot) -> None:
        try:
            import tensorboard  # noqa: F401
        except ImportError:
            raise MidprobeError("--log tensorboard needs the tensorboard package: "
                                "pip install 'midprobe[tensorboard]' (or pip install tensorboard)") from None
        self.base = root.root / "logs" / "tensorboard"
        self._root = root
        self._writers: dict[ProbeId, Any] = {}

    def folder(self, probe: ProbeId) -> Path:
        *parts, key, seed = probe
        return self.base.joinpath(*(_part(p) for p in (*parts, f"{key}-seed{seed}")))

    def _writer(self, probe: ProbeId) -> Any:
        if probe not in self._writers:
            from torch.utils.tensorboard import SummaryWriter

            folder = self._root.ensure_writable(self.folder(probe))
            for old in folder.glob("events.out.tfevents.*"):
                old.unlink()
            self._writers[probe] = SummaryWriter(log_dir=str(folder))
        return self._writers[probe]

    def step(self, probe: ProbeId, step: int, loss: float, lr: float) -> None:
        """One optimiser step of a trained probe (``step`` 1-based)."""
        writer = self._writer(probe)
        writer.add_scalar("train/loss", loss, step)
        writer.add_scalar("train/lr", lr, step)

    def final(self, probe: ProbeId, metrics: Mapping[str, Any], *, step: int, config: Mapping[str, Any]) -> None:
        """The probe's test metrics (finite numbers only) at ``step``, and its configuration."""
        writer = self._writer(probe)
        for name, value in metrics.items():
            if isinstance(value, (int, float)) and math.isfinite(value):
                writer.add_scalar(f"test/{name}", float(value), step)
        writer.add_text("config", "```\n" + json.dumps(dict(config), indent=2, sort_keys=True, default=str) + "\n```",
                        step)
        writer.flush()

    def close(self) -> None:
        for writer in self._writers.values():
            writer.close()
        self._writers.clear()


#: ``--log`` choices: name -> logger class (constructed with the data root)
LOGGERS = {"tensorboard": TensorBoardLog}


def open_log(kind: str | None, root: DataRoot) -> TensorBoardLog | None:
    """The logger named ``kind`` (``None``: no logging); an unknown name is an error."""
    if kind is None:
        return None
    if kind not in LOGGERS:
        raise MidprobeError(f"--log {kind!r}: expected one of {', '.join(sorted(LOGGERS))}")
    return LOGGERS[kind](root)
