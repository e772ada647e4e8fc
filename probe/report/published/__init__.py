"""The paper's 22 models as reference points: values read off its published figures.

``paper_figure_values.csv`` (provenance and precision in ``paper_figure_values.md`` beside it)
holds, per model, the paper's own ImageNet measurement (``IN1k_LP_BN``: a linear probe with
BatchNorm, the x axis of every mid-level vs ImageNet figure) and each task's headline. They are a
``published`` source: never records, never mixed into measured cells, shown only beside numbers
measured under ``PROTOCOL=paper`` on the paper's datasets (:func:`comparable`).
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources

#: Precision of a value read off a figure, in the figure's units (points of %; object
#: correspondence, on its own scale, ±0.05).
READ_PRECISION = 0.3
PROVENANCE = "published (read off the paper's figures, ±0.3)"
SOURCE_FILE = "probe/report/published/paper_figure_values.csv"
IMAGENET_COLUMN = "IN1k_LP_BN(x-axis)"
IMAGENET_AXIS = ("the paper's own ImageNet-1k linear probe with BatchNorm (its `IN1k_LP_BN`), "
                 "for published and zoo models alike")

#: (task, dataset loader) -> the CSV column holding the paper's headline for it.
COLUMNS = {
    ("segmentation", "voc"): "GenericObjSeg_mIoU",
    ("similarity", "nights"): "MidLevelSim_F1",
    ("depth", "nyuv2"): "SceneDepth_NYU_d1",
    ("depth", "navi"): "ObjectDepth_NAVI_d1",
    ("normals", "nyuv2"): "SceneNormals_NYU_d1(<11.25deg)",
    ("normals", "navi"): "ObjectNormals_NAVI_d1(<11.25deg)",
    ("correspondence", "scannet1500"): "SceneCorr_ScanNet_2DRecall@5px",
    ("correspondence", "navi"): "ObjectCorr_NAVI_2DRecall@5px",
}
#: Columns whose values are on the figure's own scale, not a percentage: shown, never differenced.
OWN_SCALE = {"ObjectCorr_NAVI_2DRecall@5px"}
#: The R² printed on each of the paper's mid-level vs ImageNet figures (the known answer).
PRINTED_R2 = {
    "GenericObjSeg_mIoU": 0.70, "MidLevelSim_F1": 0.78, "SceneDepth_NYU_d1": 0.23, "ObjectDepth_NAVI_d1": 0.34,
    "SceneNormals_NYU_d1(<11.25deg)": 0.08, "ObjectNormals_NAVI_d1(<11.25deg)": 0.27,
    "SceneCorr_ScanNet_2DRecall@5px": 0.03, "ObjectCorr_NAVI_2DRecall@5px": 0.36,
}
#: The paper's model names -> the zoo's (``extract/backbones/zoo.py``).
ZOO_NAMES = {
    "Jigsaw": "rn50_jigsaw", "RotNet": "rn50_rotnet", "NPID": "rn50_npid", "NPID++": "rn50_npidpp",
    "PIRL": "rn50_pirl", "ClusterFit": "rn50_clusterfit", "SimCLR": "rn50_simclr", "SeLa-v2": "rn50_selav2",
    "DeepCluster-v2": "rn50_deepclusterv2", "SwAV": "rn50_swav", "MoCo v2": "rn50_mocov2",
    "SimSiam": "rn50_simsiam", "Barlow Twins": "rn50_barlowtwins", "BYOL": "rn50_byol",
    "DenseCL": "rn50_densecl", "DINO (RN50)": "rn50_dino", "MoCo v3 (RN50)": "rn50_mocov3",
    "DINO (ViT-B/16)": "vit_b_dino", "MoCo v3 (ViT-B/16)": "vit_b_mocov3", "iBOT (ViT-B/16)": "vit_b_ibot",
    "MAE (ViT-B/16)": "vit_b_mae", "MaskFeat (ViT-B/16)": "vit_b_maskfeat",
}


@dataclass(frozen=True)
class PublishedModel:
    """One of the paper's models: its name, zoo name, ImageNet accuracy (%) and headlines (% or
    the figure's scale) keyed by CSV column, plus the ranking figure's two scores."""

    name: str
    zoo: str
    imagenet: float
    values: dict[str, float]
    mid_score: float
    high_score: float


def load_published() -> list[PublishedModel]:
    """The 22 models of the shipped CSV, in its order."""
    text = resources.files("probe.report.published").joinpath("paper_figure_values.csv").read_text()
    out = []
    for row in csv.DictReader(text.splitlines()):
        out.append(PublishedModel(
            name=row["model"], zoo=ZOO_NAMES[row["model"]], imagenet=float(row[IMAGENET_COLUMN]),
            values={c: float(row[c]) for c in COLUMNS.values()},
            mid_score=float(row["MidLevelScore(ranking fig)"]), high_score=float(row["HighLevelScore(ranking fig)"])))
    return out


def loader_of(dataset: str) -> str:
    """A dataset store's loader: ``nyuv2@paper`` -> ``nyuv2``."""
    return dataset.split("@", 1)[0]


def published_column(task: str, dataset: str) -> str | None:
    """The CSV column of the paper's headline for ``task`` on the store ``dataset`` (None: not a paper figure)."""
    return COLUMNS.get((task, loader_of(dataset)))


def comparable(protocol: str, task: str, dataset: str, overridden: bool = False) -> tuple[bool, str]:
    """Whether published points may stand beside a measured cell, and the one line saying why not."""
    if protocol.split("+")[0] != "paper":
        return False, (f"published points are not shown: they were measured under the paper's protocol, these under "
                       f"`{protocol}` (numbers of two protocols never share a table)")
    if overridden:
        return False, ("published points are not shown beside columns that override the paper's choices (`[k=v]`): "
                       "those are other experiments")
    if published_column(task, dataset) is None:
        return False, f"published points are not shown: the paper has no figure for {task} on `{loader_of(dataset)}`"
    return True, ""


def zoo_of(model: str) -> str:
    """A measured model's zoo name without its options (``vit_b_mae+hf+paper-layers`` -> ``vit_b_mae``)."""
    return model.split("+", 1)[0]


def published_by_zoo() -> dict[str, PublishedModel]:
    return {p.zoo: p for p in load_published()}
