"""Protocols: every choice that moves a number, as data, shared by every stage.

A protocol names the loader options a dataset is prepared with (``make data``), the
extraction choices each task's cached features need (``make extract``) and how probes are
trained and scored (``make probe``). Data preparation, extraction and probing all read it
here, so this package imports nothing but ``cache``; code asks a protocol for a choice and
never branches on its name.
"""

from protocols.choices import (CORRUPTIBLE_TASKS, DEFAULT_LAYERS, DENSE_DEFAULTS, DENSE_TASKS, LOADER_STYLES, NAVI_STYLE,
                               SCANNET_STYLE, TASK_SPLITS, CorrespondenceChoices, CorrespondenceStyle, DenseChoices,
                               Deviation, DPTChoices, ExtractionChoices, Protocol, SimilarityChoices, apply,
                               canonical_corruption, correspondence_style, corruption_list, corruption_parts,
                               feature_split_name)
from protocols.registry import (DEFAULT_PROTOCOL, DEVIATIONS, MIDPROBE, PAPER, PROTOCOLS, deviation, get_protocol,
                                register_protocol, with_augment, with_deviation)

__all__ = ["CORRUPTIBLE_TASKS", "DEFAULT_LAYERS", "DENSE_DEFAULTS", "DENSE_TASKS", "LOADER_STYLES", "NAVI_STYLE",
           "SCANNET_STYLE", "TASK_SPLITS", "CorrespondenceChoices", "CorrespondenceStyle", "DenseChoices", "Deviation",
           "DPTChoices", "ExtractionChoices", "Protocol", "SimilarityChoices", "apply", "canonical_corruption",
           "correspondence_style", "corruption_list", "corruption_parts", "feature_split_name", "DEFAULT_PROTOCOL",
           "DEVIATIONS", "MIDPROBE", "PAPER", "PROTOCOLS", "deviation", "get_protocol", "register_protocol",
           "with_augment", "with_deviation"]
