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

import re
from dataclasses import replace
from typing import Any

from cache import MidprobeError

from protocols.choices import (DEFAULT_LAYERS, DENSE_TASKS, NAVI_STYLE, SCANNET_STYLE, CorrespondenceChoices,
                               DenseChoices, Deviation, ExtractionChoices, Protocol, SimilarityChoices, _frozen, apply)

#: The protocol a run reads when it names none.
DEFAULT_PROTOCOL = "midprobe"

MIDPROBE = Protocol(
    name="midprobe",
    description=("midprobe's default: per-image metrics, fixed train-split standardisation, spatial gradient "
                 "loss, linear and MLP heads; the paper's LR schedule, Probe3D's ScanNet correspondence and "
                 "NAVI's rotation bins on 3-D recall"),
    dense=_frozen({task: DenseChoices() for task in DENSE_TASKS}),
    correspondence=_frozen({"navi": CorrespondenceChoices(style=NAVI_STYLE),
                            "probe3d-scannet": CorrespondenceChoices(style=SCANNET_STYLE)}),
    extraction=_frozen(DEFAULT_LAYERS),
    similarity=SimilarityChoices(),
    base="midprobe",
)


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
              _dpt("vit_residual", "post-activation"), f"{_MV} evals/models/probes.py L283-288, L300", DENSE_TASKS,
              requires=("dpt-head",)),
    Deviation("dpt-vit-nearest", "the DPT's x4 on ViT maps is nearest, not bilinear",
              _dpt("vit_upsample", "nearest"), f"{_MV} evals/models/probes.py L396", DENSE_TASKS,
              requires=("dpt-head",)),
    Deviation("dpt-final-nearest", "the DPT's final x2 is nearest, inside the head",
              _dpt("final_upsample", "nearest"), f"{_MV} evals/models/probes.py L398", DENSE_TASKS,
              requires=("dpt-head",)),
    Deviation("dpt-cnn-inplace-relu", "CNN (ResNet) residual conv units add the input after their in-place "
              "ReLU: conv2(relu(conv1(relu(x)))) + relu(x), not + x",
              _dpt("cnn_residual", "inplace-relu"),
              f"{_MV} evals/models/probes.py L263-306 (built with inplace_relu=True: L302 out = self.relu(x) "
              "rectifies x, L306 return out + x)", DENSE_TASKS, requires=("dpt-head",), bug=True,
              note="ResNets only (a CNN pyramid); the ViT path's in-place ReLUs act on conv outputs"),
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
    Deviation("segmentation-probability-resize", "segmentation takes the sigmoid inside the head, resizes the "
              "probability bilinearly to the mask, trains with BCELoss and thresholds at 0.5 (not the logit "
              "resized, BCE with logits, > 0)",
              _dense("segmentation_output", "probability", ("segmentation",)),
              f"{_MV} evals/models/probes.py L37-40 (sigmoid in the head); train_generic_objectness.py L392 "
              "(resize), L443 (BCELoss), L446 (> 0.5)", ("segmentation",),
              note="equal to the logit resize only where the head already outputs the mask's size (the paper's "
                   "zoo at 480 px); patch-14, timm: and padded inputs differ"),
    Deviation("correspondence-batchnorm", "NAVI correspondence features pass a BatchNorm in train mode: each "
              "channel standardised with the statistics of each loader batch of 4 pairs, views separately",
              ((("correspondence", "navi", "feature_norm"), "batch"),),
              f"{_MV} evaluate_navi_correspondence.py L130-145 (never .eval()); configs/backbone/*.yaml add_norm",
              ("correspondence",), datasets=("navi", "synthetic"),
              note="for ResNets the paper's backbone BatchNorms also ran in train mode; a cache holds eval-mode "
                   "features, so only the output BatchNorm is reproduced"),
    Deviation("correspondence-batchnorm-cls", "the NAVI correspondence BatchNorm's statistics count the CLS token "
              "beside the patch tokens (all 1 + h w tokens of the last block; the CLS is dropped after)",
              ((("correspondence", "navi", "norm_tokens"), "patches+cls"),
               *((("extraction", f"correspondence:{loader}"), ExtractionChoices(layers="last",
                                                                                 global_kind="cls-raw-last"))
                 for loader in ("navi", "synthetic"))),
              f"{_MV} evals/models/dino.py L185-191 (the same in ibot, mocov3, mae, beit_v2, maskfeat, milan, pixmlm, "
              "eva)", ("correspondence",), datasets=("navi", "synthetic"), requires=("correspondence-batchnorm",),
              note="ViTs only; the split carries the last block's CLS as its global vector "
                   "(pairs@global-cls-raw-last)"),
    Deviation("correspondence-bicubic", "NAVI features are resized bicubically to the 1/4 candidate grid and "
              "read at its cells", ((("correspondence", "navi", "sampling"), "bicubic-grid"),),
              f"{_MV} evals/utils/correspondence.py L240-241", ("correspondence",), datasets=("navi", "synthetic")),
    Deviation("correspondence-bidirectional-halves", "with --bidirectional: the best 500 matches each way, "
              "concatenated, with no mutual check — what the paper's code would compute if it ran; it cannot",
              tuple(((("correspondence", style, "bidirectional"), "halves")) for style in ("navi", "probe3d-scannet")),
              f"{_MV} evals/utils/correspondence.py L79-98 (get_correspondences_ratio_test(bidirectional=True) "
              "raises at L96-98)", ("correspondence",),
              note="a path the paper's code cannot run: with bidirectional=True it raises at L96-98 on the features "
                   "its scripts pass, and no script enables it; paper follows the code's evident intent (L79-95) "
                   "under --bidirectional (off by default), which reproduces no number of the paper",
              options=_frozen({"bidirectional": True})),
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
              ((("data", "nyuv2"), _frozen({"geonet": True, "split_source": "sn40", "test_depth": "rawDepths",
                                            "geonet_mask": False, "geonet_uint8": "truncate"})),),
              f"{_MV} configs/dataset/nyu.yaml train_path; evals/datasets/nyu.py L22-24; "
              "data_processing/create_nyu_pkl.py L60-64", ("depth", "normals"), datasets=("nyuv2",)),
    Deviation("navi-paper-cut", "NAVI as the paper cut it: every 4th image of every split, short side to 512 "
              "(nearest) and a 512 centre crop before the object crop, relative depth from the full image's "
              "minimum, normals away from the camera with the principal point at the crop corner",
              ((("data", "navi"), _frozen({"every": 4, "crop": "paper", "normals": "paper", "relative_min": "image"})),),
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


PAPER = apply(MIDPROBE, tuple(c for d in DEVIATIONS for c in d.changes), name="paper")
PAPER = replace(PAPER, description="the paper's code choice for choice (midvision-probe @ 984b325; Probe3D "
                                   "where it has no script), bugs included")

PROTOCOLS: dict[str, Protocol] = {}


def register_protocol(protocol: Protocol) -> Protocol:
    """Register ``protocol`` under its name, as a base of its own (``PROTOCOL=<name>`` reads it)."""
    if protocol.base != protocol.name or protocol.variants:
        protocol = replace(protocol, base=protocol.name, variants=())
    PROTOCOLS[protocol.name] = protocol
    return protocol


register_protocol(MIDPROBE)
register_protocol(PAPER)


def get_protocol(name: str | None) -> Protocol:
    """The registered protocol ``name`` (default ``midprobe``); an unknown name lists the known ones."""
    name = name or DEFAULT_PROTOCOL
    base, _, variant = name.rpartition("+")
    if name not in PROTOCOLS and base in PROTOCOLS and re.fullmatch(r"aug\d+-[a-z0-9-]+", variant):
        # <base>+aug<views>-<policy>, as with_augment names it: a grid file (read by every worker) may name it
        views, _, policy = variant[3:].partition("-")
        return with_augment(PROTOCOLS[base], f"{views}:{policy}")
    if name not in PROTOCOLS:
        raise MidprobeError(f"unknown protocol {name!r}; known protocols: {', '.join(sorted(PROTOCOLS))}")
    return PROTOCOLS[name]


def deviation(key: str) -> Deviation:
    by_key = {d.key: d for d in DEVIATIONS}
    if key not in by_key:
        raise MidprobeError(f"unknown deviation {key!r}; known: {', '.join(by_key)}")
    return by_key[key]


def with_deviation(key: str, base: Protocol = MIDPROBE, *, prerequisites: bool = False) -> Protocol:
    """``base`` with the paper deviation ``key`` switched on (named ``<base>+<key>``); with
    ``prerequisites``, also the deviations it requires (named ``<base>+<required>+<key>``)."""
    keys = [*deviation(key).requires, key] if prerequisites else [key]
    changes = tuple(c for k in keys for c in deviation(k).changes)
    return apply(base, changes, name="+".join([base.name, *keys]), variants=tuple(keys))


def with_augment(protocol: Protocol, spec: str | None) -> Protocol:
    """``protocol`` training its dense probes on augmented views: ``spec`` is ``"<views>"`` or
    ``"<views>:<policy>"`` (``cache.augment`` policies; default ``paper-nyu``), ``"0"`` for none.

    Every dense task of every dataset reads ``train@aug<views>-<policy>`` (extracted with the same
    ``AUGMENT=``); the protocol is renamed ``<name>+aug<views>-<policy>`` so its numbers get their
    own leaderboard.
    """
    if not spec:
        return protocol
    views_text, _, policy = str(spec).partition(":")
    policy = policy or "paper-nyu"
    try:
        views = int(views_text)
    except ValueError:
        raise MidprobeError(f"augment {spec!r}: expected <views> or <views>:<policy>, e.g. 10 or 10:paper-navi") from None
    if views < 0:
        raise MidprobeError(f"augment {spec!r}: the number of views must be >= 0")
    if views:
        from cache.augment import get_policy

        get_policy(policy)
    keys = set(DENSE_TASKS) | {k for k in protocol.extraction if k.split(":")[0] in DENSE_TASKS}
    changes = tuple((("extraction", key), replace(protocol.extraction_choices(*key.split(":", 1)),
                                                  augment_views=views, augment_policy=policy if views else ""))
                    for key in sorted(keys))
    variant = f"aug{views}-{policy}" if views else "no-aug"
    return replace(apply(protocol, changes, name=f"{protocol.name}+{variant}", variants=(variant,)),
                   augment=f"{views}:{policy}" if views else "0")
