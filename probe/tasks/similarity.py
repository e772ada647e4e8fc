"""Mid-level similarity (2AFC): which candidate is closer to the reference, by cosine of global vectors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from cache import FeatureSplit, MidprobeError, SplitView
from cache.progress import progress_bar
from probe.scores import Scored
from probe.tasks import register_task
from protocols import Protocol, get_protocol
from probe.tasks.base import ZeroShotTask


def pooled_vectors(features: FeatureSplit, layers: Sequence[str] | None, *, quiet: bool = True,
                   name: str = "similarity") -> np.ndarray:
    """``(N, D) float32``: the global vector (CLS / pooled), or spatial means of ``layers`` concatenated
    (read chunk by chunk; progress over the images, ``name``, unless ``quiet``)."""
    if not layers:
        return features.global_vectors()
    n, step = features.num_images, features.chunk_images
    parts = []
    with progress_bar(total=n * len(layers), name=f"{name} pooling {'+'.join(layers)}", quiet=quiet) as bar:
        for layer in layers:
            pooled = []
            for lo in range(0, n, step):
                pooled.append(features.read(layer, lo, min(lo + step, n)).astype(np.float32).mean(axis=(2, 3)))
                bar.update(len(pooled[-1]))
            parts.append(np.concatenate(pooled))
    return np.concatenate(parts, axis=1)


def two_afc_metrics(choice: np.ndarray, answer: np.ndarray) -> dict[str, float]:
    """Accuracy, and precision / recall / F1 with "candidate 1 is closer" as the positive class."""
    choice, answer = np.asarray(choice).astype(int), np.asarray(answer).astype(int)
    tp = float(((choice == 1) & (answer == 1)).sum())
    fp = float(((choice == 1) & (answer == 0)).sum())
    fn = float(((choice == 0) & (answer == 1)).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"accuracy": float((choice == answer).mean()) if len(answer) else float("nan"),
            "precision": precision, "recall": recall, "f1": f1, "triplets": float(len(answer))}


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)
    b = b / np.maximum(np.linalg.norm(b, axis=-1, keepdims=True), 1e-12)
    return (a * b).sum(-1)


@dataclass(frozen=True)
class SimilarityTask(ZeroShotTask):
    def evaluate(self, *, features: FeatureSplit, data: SplitView, dataset_attrs: Mapping[str, Any],
                 layers: Sequence[str] | None = None, protocol: Protocol | None = None, quiet: bool = True,
                 name: str = "similarity", **_: Any) -> tuple[dict[str, float], dict[str, Any]]:
        """Choose the closer candidate of every triplet (a tie as ``protocol``'s
        :class:`~protocols.SimilarityChoices` says); returns metrics and config."""
        ties = (protocol or get_protocol(None)).similarity.ties
        vectors = pooled_vectors(features, layers, quiet=quiet, name=name).astype(np.float64)
        triplets = data.read("triplets").astype(np.int64)
        answer = data.read("triplet_answer").astype(np.int64)
        sim0 = cosine(vectors[triplets[:, 0]], vectors[triplets[:, 1]])
        sim1 = cosine(vectors[triplets[:, 0]], vectors[triplets[:, 2]])
        if ties not in ("candidate 0", "candidate 1"):
            raise MidprobeError(f"similarity ties {ties!r}: expected 'candidate 0' or 'candidate 1'")
        choice = ((sim1 >= sim0) if ties == "candidate 1" else (sim1 > sim0)).astype(int)
        config = {"task": self.name, "representation": "global" if not layers else f"mean of {'+'.join(layers)}",
                  "global_kind": features.fingerprint.get("global_kind", "default"),
                  "positive_class": "candidate 1 closer", "ties": ties}
        metrics = Scored(two_afc_metrics(choice, answer), unit="triplet", statistic="f1",
                         per_item={"choice": choice, "answer": answer})
        return metrics, config


register_task(SimilarityTask(name="similarity", kind="zero_shot", headline="f1", needs=("triplets", "triplet_answer"),
                             description="mid-level similarity, 2AFC (NIGHTS; synthetic proxy)", split="triplets"))
