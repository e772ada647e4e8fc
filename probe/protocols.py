"""Protocols: every choice that moves a probe's number, as data.

A protocol is a complete, named set of choices: for each dense task its heads, optimisation,
feature normalisation, losses, upsampling and metric aggregation; for correspondence the
feature normalisation, sampling and matching per evaluation style; for every task the
extraction choices its cached features must have been made with (input normalisation,
global vector, augmented views, layers); per dataset the loader options; per model the
variant. Code asks the protocol for a choice and never branches on a protocol's name.

Two protocols are registered:

- ``midprobe`` (the default): per-image metrics, fixed train-split standardisation, spatial
  gradient loss, linear and MLP heads — and the paper's choices wherever they are a protocol
  rather than a bug (its LR schedule, Probe3D's ScanNet correspondence, NAVI's rotation bins on
  3-D recall).
- ``paper``: ``midprobe`` with every entry of :data:`DEVIATIONS` applied — the paper's code
  (midvision-probe @ 984b325, and Probe3D where it has no script) choice for choice, bugs
  included and labelled ``bug``. ``make fidelity`` measures each deviation alone.
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
    ``vit_upsample``: the x4 after fusing ViT maps, ``"bilinear"`` (align_corners) or
    ``"nearest"``. ``final_upsample``: the last x2 of the head, ``"task"`` (left to the
    task's upsampling to the target) or ``"nearest"`` (inside the head).
    """

    vit_residual: str = "pre-activation"
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
    training loss at every s-th target pixel (1 = all).
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
    dpt: DPTChoices = DPTChoices()


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
    """

    feature_norm: str = "none"
    norm_batch: int = 4
    sampling: str = "bilinear"
    bidirectional: str = "mutual"
    top: int = 1000


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
    """

    input_norm: str = "model"
    global_kind: str = "default"
    augment_views: int = 0
    augment_policy: str = ""
    layers: str = "all"

    def split_tag(self) -> str:
        """The suffix naming a feature split made with these choices (``""`` for the defaults)."""
        parts = []
        if self.input_norm != "model":
            parts.append(f"input-{self.input_norm}")
        if self.global_kind != "default":
            parts.append(f"global-{self.global_kind}")
        if self.augment_views:
            parts.append(f"aug{self.augment_views}-{self.augment_policy}")
        return "+".join(parts)


def _frozen(mapping: Mapping[str, Any]) -> Mapping[str, Any]:
    return MappingProxyType(dict(mapping))


@dataclass(frozen=True)
class Protocol:
    """A complete set of choices.

    ``dense`` per dense task; ``correspondence`` per evaluation style (``"navi"``,
    ``"probe3d-scannet"``); ``extraction`` per task, with ``"<task>:<loader>"`` entries for
    one dataset loader overriding ``"<task>"``; ``data`` loader options per loader (a
    non-empty entry gives that protocol its own dataset store ``<loader>@<protocol>``);
    ``model_option`` the ``+option`` applied to every model that has it (``""`` = none).
    """

    name: str
    description: str
    dense: Mapping[str, DenseChoices]
    correspondence: Mapping[str, CorrespondenceChoices]
    extraction: Mapping[str, ExtractionChoices] = field(default_factory=lambda: _frozen({}))
    data: Mapping[str, Mapping[str, Any]] = field(default_factory=lambda: _frozen({}))
    model_option: str = ""

    def dense_choices(self, task: str) -> DenseChoices:
        if task not in self.dense:
            raise MidprobeError(f"protocol {self.name!r} has no choices for dense task {task!r}")
        return self.dense[task]

    def correspondence_choices(self, style: str) -> CorrespondenceChoices:
        if style not in self.correspondence:
            raise MidprobeError(f"protocol {self.name!r} has no correspondence style {style!r}; "
                                f"it has {', '.join(self.correspondence)}")
        return self.correspondence[style]

    def extraction_choices(self, task: str, loader: str = "") -> ExtractionChoices:
        """The most specific entry: ``task:loader``, then ``task``, then the defaults."""
        for key in (f"{task}:{loader}", task):
            if key in self.extraction:
                return self.extraction[key]
        return DEFAULT_LAYERS.get(task, ExtractionChoices())

    def data_options(self, loader: str) -> dict[str, Any]:
        return dict(self.data.get(loader, {}))

    def dataset_name(self, loader: str) -> str:
        """The dataset store this protocol reads for ``loader``: its own when its options differ."""
        return f"{loader}@{self.name}" if self.data.get(loader) else loader

    def model_name(self, model: str, options: tuple[str, ...] = ()) -> str:
        """``model`` with this protocol's variant when the model offers it (``options``: its ``+options``)."""
        if not self.model_option or "+" in model:
            return model
        return f"{model}+{self.model_option}" if self.model_option == "paper" and options else model

    def as_dict(self) -> dict[str, Any]:
        """Every choice as plain JSON-able data (what a record stores)."""
        return {"name": self.name, "dense": {k: dataclasses.asdict(v) for k, v in self.dense.items()},
                "correspondence": {k: dataclasses.asdict(v) for k, v in self.correspondence.items()},
                "extraction": {k: dataclasses.asdict(v) for k, v in self.extraction.items()},
                "data": {k: dict(v) for k, v in self.data.items()}, "model_option": self.model_option}


#: Which cached layers each task reads unless a protocol says otherwise (the paper's: dense
#: probes fuse four layers, correspondence matches the last block, similarity the global vector).
DEFAULT_LAYERS = {
    "depth": ExtractionChoices(layers="all"), "normals": ExtractionChoices(layers="all"),
    "segmentation": ExtractionChoices(layers="all"), "correspondence": ExtractionChoices(layers="last"),
    "similarity": ExtractionChoices(layers="global"),
}

MIDPROBE = Protocol(
    name="midprobe",
    description=("midprobe's default: per-image metrics, fixed train-split standardisation, spatial gradient "
                 "loss, linear and MLP heads; the paper's LR schedule, Probe3D's ScanNet correspondence and "
                 "NAVI's rotation bins on 3-D recall"),
    dense=_frozen({task: DenseChoices() for task in DENSE_TASKS}),
    correspondence=_frozen({"navi": CorrespondenceChoices(), "probe3d-scannet": CorrespondenceChoices()}),
    extraction=_frozen(DEFAULT_LAYERS),
)


@dataclass(frozen=True)
class Deviation:
    """One choice where the paper's code differs from ``midprobe``.

    ``changes``: ``(path, value)`` pairs applied to the ``midprobe`` protocol (a path walks
    its fields and mappings). ``reference``: where the paper's code makes the choice.
    ``bug``: the paper's behaviour is a bug that ``paper`` reproduces. ``tasks``: the tasks
    whose numbers it can move; ``datasets``: the loaders it applies to (empty = all).
    """

    key: str
    what: str
    changes: tuple[tuple[tuple[str, ...], Any], ...]
    reference: str
    tasks: tuple[str, ...]
    bug: bool = False
    datasets: tuple[str, ...] = ()
    note: str = ""


def _dense(field_name: str, value: Any, tasks: tuple[str, ...] = DENSE_TASKS) -> tuple:
    return tuple(((("dense", task, field_name), value)) for task in tasks)


def _dpt(field_name: str, value: Any) -> tuple:
    return tuple(((("dense", task, "dpt", field_name), value)) for task in DENSE_TASKS)


_MV = "midvision-probe @ 984b325"
_P3D = "Probe3D @ a1f1464"

DEVIATIONS: tuple[Deviation, ...] = (
    Deviation("dpt-head", "DPT head (hidden 512, 3x3 residual units) for every dense task, not linear + MLP",
              _dense("heads", ("dpt",)), f"{_MV} configs/probe/{{depth_dpt,snorm_dpt,binaryhead}}.yaml head_type: dpt",
              DENSE_TASKS),
    Deviation("dpt-vit-post-activation", "ViT residual conv units are conv-ReLU-conv-ReLU (+x), post-activation",
              _dpt("vit_residual", "post-activation"), f"{_MV} evals/models/probes.py L283-288, L300", DENSE_TASKS),
    Deviation("dpt-vit-nearest", "the DPT's x4 on ViT maps is nearest, not bilinear",
              _dpt("vit_upsample", "nearest"), f"{_MV} evals/models/probes.py L396", DENSE_TASKS),
    Deviation("dpt-final-nearest", "the DPT's final x2 is nearest, inside the head",
              _dpt("final_upsample", "nearest"), f"{_MV} evals/models/probes.py L398", DENSE_TASKS),
    Deviation("loss-per-gpu", "depth and normals losses are computed per GPU batch of 16 (two GPUs, DDP "
              "averages them) — the pooled log loss and the gradient term see 16 images",
              _dense("loss_groups", 2, ("depth", "normals")),
              f"{_MV} launch_script/launch_depth.py num_gpus=2 batch_size=16; configs/depth_training.yaml",
              ("depth", "normals")),
    Deviation("depth-gradient-across-batch", "the depth 'gradient' term compares log residuals of images b and "
              "b+2 of the batch and its horizontal term is empty: no spatial gradient",
              _dense("depth_gradient", "across-batch", ("depth",)), f"{_MV} evals/utils/losses.py L124-152",
              ("depth",), bug=True),
    Deviation("depth-relative-min", "relative (object) depth bins start at 0.001, not 0.01",
              _dense("depth_relative_min", 0.001, ("depth",)),
              f"{_MV} configs/probe/depth_dpt.yaml min_depth 0.001; evals/datasets/navi.py L81 max_depth 1.0",
              ("depth",), datasets=("navi",)),
    Deviation("normals-uncertainty", "normals use the uncertainty-aware angular loss (4 output channels)",
              _dense("normals_loss", "uncertainty-aware", ("normals",)),
              f"{_MV} configs/probe/snorm_dpt.yaml uncertainty_aware: True; train_snorm.py L112-113", ("normals",)),
    Deviation("normals-depth-mask", "normals train on the pixels with depth, so pixels without a normal count "
              "as a constant pi/2", _dense("normals_mask", "depth", ("normals",)),
              f"{_MV} train_snorm.py L95 mask = depth > 0", ("normals",), bug=True),
    Deviation("normals-bicubic", "normal predictions are upsampled to the target bicubically",
              _dense("upsample", "bicubic", ("normals",)), f"{_MV} train_snorm.py L110, L453", ("normals",)),
    Deviation("segmentation-batch-16", "segmentation trains and evaluates in batches of 16",
              (*_dense("batch_size", 16, ("segmentation",)), *_dense("eval_batch_size", 16, ("segmentation",))),
              f"{_MV} configs/objectness_train.yaml batch_size: 16", ("segmentation",)),
    Deviation("segmentation-raw-features", "the segmentation probe trains on raw features (the backbone's "
              "added BatchNorm is in eval mode with its initial statistics: an identity)",
              _dense("feature_norm", "none", ("segmentation",)),
              f"{_MV} train_generic_objectness.py L532 model.eval(); configs/backbone/*.yaml add_norm",
              ("segmentation",)),
    Deviation("segmentation-logit-batchnorm", "a BatchNorm on the logit, never switched to eval: test logits "
              "are normalised with the statistics of their test batch",
              _dense("logit_norm", "batchnorm-train", ("segmentation",)),
              f"{_MV} evals/models/probes.py L25-26, L37-40; train_generic_objectness.py (probe never .eval())",
              ("segmentation",), bug=True),
    Deviation("segmentation-batch-metrics", "segmentation metrics pool TP/FP/FN over each test batch and "
              "average batches (the partial last batch counts as one); CorLoc is one 0/1 per batch",
              _dense("aggregation", "batch", ("segmentation",)),
              f"{_MV} train_generic_objectness.py L435-468, L181", ("segmentation",), bug=True),
    Deviation("correspondence-batchnorm", "NAVI correspondence features pass a BatchNorm in train mode: each "
              "channel standardised with the statistics of each loader batch of 4 pairs, views separately",
              ((("correspondence", "navi", "feature_norm"), "batch"),),
              f"{_MV} evaluate_navi_correspondence.py L130-145 (never .eval()); configs/backbone/*.yaml add_norm",
              ("correspondence",), datasets=("navi", "synthetic"),
              note="for ResNets the paper's backbone BatchNorms also ran in train mode; a cache holds eval-mode "
                   "features, so only the output BatchNorm is reproduced"),
    Deviation("correspondence-bicubic", "NAVI features are resized bicubically to the 1/4 candidate grid and "
              "read at its cells", ((("correspondence", "navi", "sampling"), "bicubic-grid"),),
              f"{_MV} evals/utils/correspondence.py L240-241", ("correspondence",), datasets=("navi", "synthetic")),
    Deviation("correspondence-bidirectional-halves", "with --bidirectional: the best 500 matches each way, "
              "concatenated, with no mutual check",
              tuple(((("correspondence", style, "bidirectional"), "halves")) for style in ("navi", "probe3d-scannet")),
              f"{_MV} evals/utils/correspondence.py L79-98", ("correspondence",),
              note="only with --bidirectional (off by default)"),
    Deviation("similarity-raw-cls", "NIGHTS: the CLS token of the last block before the final LayerNorm, on "
              "[0, 1] pixels without mean/std normalisation",
              ((("extraction", "similarity"), ExtractionChoices(input_norm="none", global_kind="cls-raw-last",
                                                               layers="global")),),
              f"{_MV} evals/models/dino.py L208; evals/datasets/utils.py L61-69 (no Normalize)", ("similarity",)),
    Deviation("scannet-half-normalisation", "ScanNet images are normalised with mean = std = 0.5",
              ((("extraction", "correspondence:scannet1500"), ExtractionChoices(input_norm="half", layers="last")),),
              f"{_P3D} evals/datasets/scannet_pairs.py L48", ("correspondence",), datasets=("scannet1500",)),
    Deviation("augmented-views", "depth and normals train on augmented views: ColorJitter(0.2, 0.2, 0.2, 0.2) "
              "p=0.8 (NYU, NAVI) and RandomResizedCrop(0.5-1) p=0.5 (NYU); cached as 10 views, epoch e reads "
              "view e mod 10",
              tuple(((("extraction", f"{task}:{loader}"), ExtractionChoices(augment_views=10, augment_policy=policy)))
                    for task in ("depth", "normals")
                    for loader, policy in (("nyuv2", "paper-nyu"), ("navi", "paper-navi"), ("synthetic", "paper-nyu"))),
              f"{_MV} configs/dataset/{{nyu,navi}}.yaml augment_train; evals/datasets/utils.py L126-135, L190-214",
              ("depth", "normals"), datasets=("nyuv2", "navi", "synthetic"),
              note="on the synthetic set the NYU policy stands in for a scene dataset's"),
    Deviation("nyu-geonet", "NYUv2 trains depth and normals on GeoNet's ~30.9k frames (mask ignored, image "
              "truncated to uint8) and tests on FAIR's SN40 split with raw Kinect depth",
              ((("data", "nyuv2"), _frozen({"geonet": True, "split_source": "sn40", "test_depth": "rawDepths"})),),
              f"{_MV} configs/dataset/nyu.yaml train_path; evals/datasets/nyu.py L22-24; "
              "data_processing/create_nyu_pkl.py L60-64", ("depth", "normals"), datasets=("nyuv2",)),
    Deviation("navi-paper-cut", "NAVI as the paper cut it: every 4th image of every split, short side to 512 "
              "(nearest) and a 512 centre crop before the object crop, relative depth from the full image's "
              "minimum, normals away from the camera with the principal point at the crop corner",
              ((("data", "navi"), _frozen({"paper_cut": True})),),
              f"{_MV} evals/datasets/navi.py L113, L157, L180; evals/datasets/utils.py L87-123, L242-267",
              ("depth", "normals", "correspondence"), datasets=("navi",), bug=True,
              note="the normals' principal point at the crop corner is a bug"),
    Deviation("voc-void-foreground", "VOC: the palette's void band counts as foreground; images resized with "
              "Lanczos", ((("data", "voc"), _frozen({"void_as_foreground": True, "resample": "lanczos"})),),
              f"{_MV} evals/datasets/voc.py L62-93", ("segmentation",), datasets=("voc",)),
    Deviation("model-variants", "each model as the paper's code loaded it (its +paper options: MoCo v3's "
              "momentum encoder, MAE from Hugging Face at blocks 1/4/7/10 with exact sin-cos positions)",
              ((("model_option",), "paper"),), f"{_MV} evals/models/mocov3.py, mae.py", DENSE_TASKS +
              ("correspondence", "similarity"), bug=True,
              note="MoCo v3's momentum encoder replacing the base encoder is a bug"),
)


def apply(protocol: Protocol, changes: tuple[tuple[tuple[str, ...], Any], ...], *, name: str) -> Protocol:
    """``protocol`` with each ``(path, value)`` set, renamed ``name``."""
    out = protocol
    for path, value in changes:
        out = _set(out, path, value)
    return replace(out, name=name)


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


PAPER = apply(MIDPROBE, tuple(c for d in DEVIATIONS for c in d.changes), name="paper")
PAPER = replace(PAPER, description="the paper's code choice for choice (midvision-probe @ 984b325; Probe3D "
                                   "where it has no script), bugs included")

PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(MIDPROBE)
register_protocol(PAPER)


def get_protocol(name: str | None) -> Protocol:
    """The registered protocol ``name`` (default ``midprobe``); an unknown name lists the known ones."""
    name = name or "midprobe"
    if name not in PROTOCOLS:
        raise MidprobeError(f"unknown protocol {name!r}; known protocols: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def with_deviation(key: str, base: Protocol = MIDPROBE) -> Protocol:
    """``base`` with the one paper deviation ``key`` switched on (named ``midprobe+<key>``)."""
    by_key = {d.key: d for d in DEVIATIONS}
    if key not in by_key:
        raise MidprobeError(f"unknown deviation {key!r}; known: {', '.join(by_key)}")
    return apply(base, by_key[key].changes, name=f"{base.name}+{key}")
