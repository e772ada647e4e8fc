"""The choices a protocol is made of: frozen dataclasses, one per stage and task family.

Every field is a choice that can move a number; its docstring says what each value does.
``apply`` builds one protocol from another by setting fields along paths, which is how
``paper`` is defined from ``midprobe`` (see :mod:`protocols.registry`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field, replace
from types import MappingProxyType
from typing import Any, Mapping

from cache import MidprobeError

DENSE_TASKS = ("depth", "normals", "segmentation")


@dataclass(frozen=True)
class DPTChoices:
    """Details of the DPT head that differ between Probe3D's CNN and ViT paths.

    ``vit_residual``: the residual conv units on ViT maps, ``"pre-activation"``
    (ReLU-conv-ReLU-conv, + x) or ``"post-activation"`` (conv-ReLU-conv-ReLU, + x).
    ``cnn_residual``: the units on a CNN pyramid, ``"pre-activation"`` or ``"inplace-relu"``
    (ReLU-conv-ReLU-conv, + relu(x): the first ReLU is in place, so the skip adds the rectified input).
    ``vit_upsample``: the x4 after fusing ViT maps, ``"bilinear"`` (align_corners) or
    ``"nearest"``. ``final_upsample``: the last x2 of the head, ``"task"`` (left to the
    task's upsampling to the target) or ``"nearest"`` (inside the head).
    """

    vit_residual: str = "pre-activation"
    cnn_residual: str = "pre-activation"
    vit_upsample: str = "bilinear"
    final_upsample: str = "task"


@dataclass(frozen=True)
class DenseChoices:
    """Everything that shapes a trained probe of one dense task.

    ``schedule``: ``"quarter-cosine"`` — warm-up ``0.99 s/W + 0.01`` over ``W`` steps, then
    ``0.99 cos(pi/2 · progress) + 0.01`` — or ``"half-cosine"`` (warm-up ``(s+1)/W``, then
    ``(1 + cos(pi · progress)) / 2`` to 0). ``feature_norm``: ``"train-stats"`` (per-channel
    mean/std of the train split, fixed) or ``"none"`` (raw cached features).
    ``loss_groups``: the batch's loss is the mean of the losses of this many equal parts
    (two GPUs under DDP each compute the loss of their half). ``upsample``: predictions to
    the target grid, ``"bilinear"`` or ``"bicubic"``. ``logit_norm``: ``"none"`` or
    ``"batchnorm-train"`` (a BatchNorm on the logit left in train mode, so test logits are
    normalised with the statistics of their test batch). ``aggregation``: metrics
    ``"image"`` by image then averaged, or ``"batch"`` pooled over each evaluation batch of
    ``eval_batch_size`` images then averaged over batches. Task-specific: ``depth_gradient``
    ``"spatial"`` (MegaDepth's term over the image axes) or ``"across-batch"`` (the paper's
    indexing: log residuals of image b against b+2, no spatial gradient);
    ``depth_relative_min`` the first bin of relative depth; ``depth_bins`` where the 256 bins
    are resolved (``"quarter"`` of the target or the feature ``"grid"``); ``normals_loss``
    ``"angular"`` or ``"uncertainty-aware"``; ``normals_mask`` the training mask, ``"normals"``
    (valid target normals) or ``"depth"`` (pixels with depth); ``loss_stride`` computes the
    training loss at every s-th target pixel (1 = all). ``segmentation_output``: ``"logit"``
    (the logit resized to the target, BCE with logits, foreground where > 0) or ``"probability"``
    (sigmoid on the head's grid, the probability resized, ``BCELoss``, foreground where > 0.5).
    """

    heads: tuple[str, ...] = ("linear", "mlp")
    lr: float = 5e-4
    epochs: int = 10
    warmup_epochs: float = 1.5
    batch_size: int = 32
    weight_decay: float = 0.01
    hidden: int = 512
    schedule: str = "quarter-cosine"
    feature_norm: str = "train-stats"
    loss_groups: int = 1
    upsample: str = "bilinear"
    logit_norm: str = "none"
    aggregation: str = "image"
    eval_batch_size: int = 32
    depth_gradient: str = "spatial"
    depth_relative_min: float = 0.01
    depth_bins: str = "quarter"
    normals_loss: str = "angular"
    normals_mask: str = "normals"
    loss_stride: int = 1
    segmentation_output: str = "logit"
    dpt: DPTChoices = DPTChoices()


#: The dense choices' defaults, the one place probe code and benchmarks take a default head width or
#: learning rate from.
DENSE_DEFAULTS = DenseChoices()


@dataclass(frozen=True)
class CorrespondenceStyle:
    """How a dataset's correspondence errors are measured and reported.

    ``name``: the style (``"navi"``: midvision-probe's NAVI script, full-resolution pixels, 3-D
    recall; ``"probe3d-scannet"``: Probe3D's ScanNet script, 1/4-resolution pixels).
    ``pixel_scale``: 2-D errors are in pixels of the image scaled by this factor.
    ``thresholds_px`` / ``thresholds_m``: recall thresholds, pixels (after scaling) and metres.
    ``ray_offset`` / ``sample_offset``: where, in pixels from a candidate's full-resolution
    pixel ``(4i, 4j)``, its ray is cast and its feature is read (Probe3D's ScanNet script works
    on the 1/4 grid's cell centres). ``padding``: bilinear reads outside the map.
    ``rotation_bins``: edges in degrees, each bin ``[lo, hi)``; ``binned``: the per-pair
    metric binned (a 2-D one when the split has no metric depth); ``bin_2d``: every 2-D recall
    is binned too.
    """

    name: str = "navi"
    pixel_scale: float = 1.0
    thresholds_px: tuple[float, ...] = (5, 25, 50)
    thresholds_m: tuple[float, ...] = (0.01, 0.02, 0.05)
    rotation_bins: tuple[float, ...] = (0, 30, 60, 90, 120)
    binned: str = "recall_3d_2cm"
    ray_offset: float = 0.0
    sample_offset: float = 0.0
    padding: str = "border"
    bin_2d: bool = True


#: The two evaluation styles: NAVI's (midvision-probe) and ScanNet-1500's (Probe3D).
NAVI_STYLE = CorrespondenceStyle()
SCANNET_STYLE = CorrespondenceStyle("probe3d-scannet", 0.25, (5, 10, 20), (), (0, 15, 30, 60, 180), "recall_2d_10px",
                                    ray_offset=2.0, sample_offset=1.5, padding="zeros", bin_2d=False)
#: The style of a dataset that names none, by its loader (default ``navi``).
LOADER_STYLES: Mapping[str, str] = MappingProxyType({"scannet1500": "probe3d-scannet"})


def correspondence_style(attrs: Mapping[str, Any]) -> str:
    """A dataset store's correspondence style: its ``correspondence_style`` attribute, else by its
    loader, else ``navi``."""
    return attrs.get("correspondence_style") or LOADER_STYLES.get(attrs.get("loader", attrs.get("name", "")), "navi")


@dataclass(frozen=True)
class CorrespondenceChoices:
    """Matching choices of one correspondence evaluation style.

    ``feature_norm``: ``"none"`` (raw cached features) or ``"batch"`` (each channel
    standardised with the statistics of the views in a batch of ``norm_batch`` pairs — first
    views and second views separately, over every position — as a BatchNorm in train mode).
    ``sampling``: ``"bilinear"`` (each candidate's feature read bilinearly at its pixel) or
    ``"bicubic-grid"`` (maps resized bicubically to the candidates' 1/4 grid, read at the
    cell). ``bidirectional``: what ``--bidirectional`` does, ``"mutual"`` (mutual nearest
    neighbours only) or ``"halves"`` (the best ``top/2`` each way, concatenated).
    ``style``: how errors are measured and reported (:class:`CorrespondenceStyle`).
    ``norm_tokens``: what the ``"batch"`` statistics count, ``"patches"`` (the map's positions)
    or ``"patches+cls"`` (also each view's CLS token, from a split extracted with
    ``global_kind="cls-raw-last"``; a model without a CLS token counts its patches alone).
    """

    feature_norm: str = "none"
    norm_batch: int = 4
    sampling: str = "bilinear"
    bidirectional: str = "mutual"
    top: int = 1000
    norm_tokens: str = "patches"
    style: CorrespondenceStyle = NAVI_STYLE


@dataclass(frozen=True)
class SimilarityChoices:
    """Choices of the 2AFC similarity task. ``ties``: which candidate a tie of cosine similarities
    picks, ``"candidate 1"`` (the paper's ``torch.where(sim_left > sim_right, 0, 1)``) or
    ``"candidate 0"``."""

    ties: str = "candidate 1"


@dataclass(frozen=True)
class ExtractionChoices:
    """How the features a task reads must have been extracted.

    ``input_norm``: ``"model"`` (the backbone's own mean/std), ``"none"`` ([0, 1] pixels) or
    ``"half"`` (mean = std = 0.5). ``global_kind``: the global vector, ``"default"`` (timm's
    pre-logits: final-norm CLS for a ViT, pooled last stage for a CNN), ``"cls-raw-last"``
    (the CLS token of the last tapped block, before the final norm) or ``"gap"``.
    ``augment_views``: ``k`` seeded augmented views of each training image (``augment_policy``
    names the augmentation; epoch e reads view e mod k); 0 = none. ``layers``: what the task
    reads — ``"all"`` cached layers, the ``"last"`` one, or only the ``"global"`` vector.
    ``corruption``: a seeded image corruption applied to evaluation (never training) images
    before the backbone, ``"<name>:<severity>"`` or ``"<name>:<severity>:<seed>"`` in the
    canonical form of :func:`extract.corruptions.parse_corruption` (``"fog:3"``); ``""`` = clean.
    """

    input_norm: str = "model"
    global_kind: str = "default"
    augment_views: int = 0
    augment_policy: str = ""
    layers: str = "all"
    corruption: str = ""

    def split_tag(self) -> str:
        """The suffix naming a feature split made with these choices (``""`` for the defaults)."""
        parts = []
        if self.input_norm != "model":
            parts.append(f"input-{self.input_norm}")
        if self.global_kind != "default":
            parts.append(f"global-{self.global_kind}")
        if self.augment_views:
            parts.append(f"aug{self.augment_views}-{self.augment_policy}")
        if self.corruption:
            parts.append("corrupt-" + self.corruption.replace(":", "-"))
        return "+".join(parts)


def feature_split_name(split: str, choices: ExtractionChoices, *, training: bool = False) -> str:
    """The feature split holding dataset split ``split`` extracted with ``choices``:
    ``<split>`` for the defaults, else ``<split>@<tag>``. Augmented views apply to training
    splits only (a test split is never augmented), corruptions to evaluation splits only."""
    if not training:
        choices = replace(choices, augment_views=0, augment_policy="")
    else:
        choices = replace(choices, corruption="")
    tag = choices.split_tag()
    return f"{split}@{tag}" if tag else split


#: The dataset splits each task reads, and whether it trains on them.
TASK_SPLITS: Mapping[str, tuple[tuple[str, bool], ...]] = MappingProxyType({
    "depth": (("train", True), ("test", False)), "normals": (("train", True), ("test", False)),
    "segmentation": (("train", True), ("test", False)), "correspondence": (("pairs", False),),
    "similarity": (("triplets", False),),
})

def corruption_parts(text: str) -> tuple[str, int, int] | None:
    """``"<name>:<severity>[:<seed>]"`` -> ``(name, severity, seed)`` (seed 0 when left out); ``""`` or
    ``"none"`` -> ``None`` (the clean image). Severities 0-5 (ImageNet-C's 1-5; 0 = clean). Only
    the syntax is checked here; which names exist is the extractor's registry
    (:mod:`extract.corruptions`)."""
    text = text.strip()
    if text in ("", "none"):
        return None
    parts = text.split(":")
    if len(parts) not in (2, 3) or not parts[0]:
        raise MidprobeError(f"corruption {text!r}: expected <name>:<severity>[:<seed>], e.g. fog:3 (or none)")
    try:
        severity, seed = int(parts[1]), int(parts[2]) if len(parts) == 3 else 0
    except ValueError:
        raise MidprobeError(f"corruption {text!r}: severity and seed must be integers, e.g. fog:3 or fog:3:1") from None
    if not 0 <= severity <= 5 or seed < 0:
        raise MidprobeError(f"corruption {text!r}: severity must be 0-5 (0 = clean) and the seed >= 0")
    return parts[0], severity, seed


def canonical_corruption(text: str) -> str:
    """The name ``ExtractionChoices.corruption`` and records use: ``"fog:3"`` (``"fog:3:1"`` for seed
    1); ``""`` for the clean image."""
    parts = corruption_parts(text)
    if parts is None:
        return ""
    name, severity, seed = parts
    return f"{name}:{severity}" + (f":{seed}" if seed else "")


def corruption_list(text: str | None) -> list[str]:
    """A comma-separated list of corruptions, canonical, in order, without repeats or clean entries."""
    out: list[str] = []
    for part in (text or "").split(","):
        name = canonical_corruption(part)
        if name and name not in out:
            out.append(name)
    return out


#: The tasks whose evaluation splits can be corrupted (``ExtractionChoices.corruption``): the dense
#: tasks' test split and correspondence's pairs. Not similarity: a 2AFC answer is a judgement of
#: the clean images, which a corruption of all three would change.
CORRUPTIBLE_TASKS = ("depth", "normals", "segmentation", "correspondence")

#: Which cached layers each task reads unless a protocol says otherwise (the paper's: dense
#: probes fuse four layers, correspondence matches the last block, similarity the global vector).
DEFAULT_LAYERS = {
    "depth": ExtractionChoices(layers="all"), "normals": ExtractionChoices(layers="all"),
    "segmentation": ExtractionChoices(layers="all"), "correspondence": ExtractionChoices(layers="last"),
    "similarity": ExtractionChoices(layers="global"),
}

def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Protocol:
    """A complete set of choices.

    ``dense`` per dense task; ``correspondence`` per evaluation style (``"navi"``,
    ``"probe3d-scannet"``: :func:`correspondence_style`); ``similarity`` the 2AFC choices;
    ``extraction`` per task, with ``"<task>:<loader>"`` entries for one dataset loader
    overriding ``"<task>"``; ``data`` loader options per loader (a non-empty entry gives that
    protocol its own dataset store ``<loader>@<protocol>``); ``model_option`` the ``+option``
    applied to every model that offers it (``""`` = none).

    ``base``: the registered protocol this one was built from (itself when registered, ``""``
    until then), whose ``PROTOCOL=`` prepares and extracts what it reads; ``variants``: what was
    applied on top, in order (``aug10-paper-nyu``, deviation keys), which its ``name`` spells
    out; ``augment``: the ``AUGMENT=`` it trains on (``"<views>:<policy>"``, ``""`` = the base's).
    """

    name: str
    description: str
    dense: Mapping[str, DenseChoices]
    correspondence: Mapping[str, CorrespondenceChoices]
    extraction: Mapping[str, ExtractionChoices] = field(default_factory=lambda: _frozen({}))
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _frozen({}))
    model_option: str = ""
    similarity: SimilarityChoices = SimilarityChoices()
    base: str = ""
    variants: tuple[str, ...] = ()
    augment: str = ""

    def dense_choices(self, task: str) -> DenseChoices:
        if task not in self.dense:
            raise MidprobeError(f"protocol {self.name!r} has no choices for dense task {task!r}")
        return self.dense[task]

    def correspondence_choices(self, style: str) -> CorrespondenceChoices:
        if style not in self.correspondence:
            raise MidprobeError(f"protocol {self.name!r} has no correspondence style {style!r}; "
                                f"it has {', '.join(self.correspondence)}")
        return self.correspondence[style]

    def correspondence_of(self, dataset_attrs: Mapping[str, Any]) -> CorrespondenceChoices:
        """The correspondence choices for a dataset store with ``dataset_attrs`` (by its style)."""
        return self.correspondence_choices(correspondence_style(dataset_attrs))

    def extraction_choices(self, task: str, loader: str = "") -> ExtractionChoices:
        """The most specific entry: ``task:loader``, then ``task``, then the defaults."""
        for key in (f"{task}:{loader}", task):
            if key in self.extraction:
                return self.extraction[key]
        return DEFAULT_LAYERS.get(task, ExtractionChoices())

    def feature_splits(self, task: str, loader: str = "") -> list[tuple[str, str, bool, ExtractionChoices]]:
        """``(dataset split, feature split, training, choices)`` for every split ``task`` reads."""
        choices = self.extraction_choices(task, loader)
        return [(split, feature_split_name(split, choices, training=training), training, choices)
                for split, training in TASK_SPLITS.get(task, ())]

    def data_options(self, loader: str) -> dict[str, Any]:
        return dict(self.data.get(loader, {}))

    def dataset_name(self, loader: str) -> str:
        """The dataset store this protocol reads for ``loader``: its own when its options differ."""
        return f"{loader}@{self.name}" if self.data.get(loader) else loader

    def model_name(self, model: str, offered: tuple[str, ...] = ()) -> str:
        """``model`` with this protocol's ``+model_option`` when the model offers that option
        (``offered``: the option names it takes, ``paper`` among them when it has paper options);
        a name that already carries options is taken as it is."""
        if not self.model_option or "+" in model or self.model_option not in offered:
            return model
        return f"{model}+{self.model_option}"

    def as_dict(self) -> dict[str, Any]:
        """Its name and every choice as plain JSON-able data (``base``/``variants`` only say how it
        was built)."""
        return {"name": self.name, "dense": {k: dataclasses.asdict(v) for k, v in self.dense.items()},
                "correspondence": {k: dataclasses.asdict(v) for k, v in self.correspondence.items()},
                "similarity": dataclasses.asdict(self.similarity),
                "extraction": {k: dataclasses.asdict(v) for k, v in self.extraction.items()},
                "data": {k: dict(v) for k, v in self.data.items()}, "model_option": self.model_option}


@dataclass(frozen=True)
class Deviation:
    """One choice where the paper's code differs from ``midprobe``.

    ``changes``: ``(path, value)`` pairs applied to the ``midprobe`` protocol (a path walks
    its fields and mappings). ``reference``: where the paper's code makes the choice.
    ``bug``: the paper's behaviour is a bug that ``paper`` reproduces. ``tasks``: the tasks
    whose numbers it can move; ``datasets``: the loaders it applies to (empty = all).
    ``requires``: deviations it only matters with (a DPT detail needs the DPT head), switched
    on with it when it is measured alone; ``options``: run options it only matters under
    (``{"bidirectional": True}``).
    """

    key: str
    what: str
    changes: tuple[tuple[tuple[str, ...], Any], ...]
    reference: str
    tasks: tuple[str, ...]
    bug: bool = False
    datasets: tuple[str, ...] = ()
    note: str = ""
    requires: tuple[str, ...] = ()
    options: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))


def apply(protocol: Protocol, changes: tuple[tuple[tuple[str, ...], Any], ...], *, name: str,
          variants: tuple[str, ...] = ()) -> Protocol:
    """``protocol`` with each ``(path, value)`` set, renamed ``name``: with ``variants``, a variant of
    ``protocol``'s base (they are appended to its ``variants``); without, a new base."""
    out = protocol
    for path, value in changes:
        out = _set(out, path, value)
    if variants:
        return replace(out, name=name, base=protocol.base or protocol.name, variants=(*protocol.variants, *variants))
    return replace(out, name=name, base=name, variants=())


def _set(node: Any, path: tuple[str, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(node, Mapping):
        return _frozen({**node, head: _set(node.get(head), rest, value)})
    if dataclasses.is_dataclass(node):
        if head not in {f.name for f in dataclasses.fields(node)}:
            raise KeyError(f"{type(node).__name__} has no choice {head!r}")
        return replace(node, **{head: _set(getattr(node, head), rest, value)})
    raise KeyError(f"cannot set {'.'.join(path)} on a {type(node).__name__}")
