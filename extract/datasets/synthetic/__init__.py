"""Procedural synthetic scenes with exact depth, normals, masks, correspondences and 2AFC triplets."""

from extract.datasets.synthetic.build import DEFAULTS, prepare_synthetic

__all__ = ["DEFAULTS", "prepare_synthetic"]
