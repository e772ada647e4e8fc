"""The on-disk contract between midprobe's stages.

``extract`` writes dataset and feature stores through this package; ``probe`` reads them
through it. Nothing here loads a backbone or trains a head.
"""

from cache.errors import MidprobeError
from cache.paths import DataRoot, data_root
from cache.dataset_store import DatasetStore, SplitView, create_dataset_store, open_dataset
from cache.fingerprint import FORMAT_VERSION, check_fingerprint
from cache.feature_store import FeatureSplit, list_feature_stores, open_features
from cache.feature_writer import FeatureWriter, open_feature_writer
from cache.batches import iterate_batches

__all__ = [
    "MidprobeError",
    "DataRoot",
    "data_root",
    "DatasetStore",
    "SplitView",
    "create_dataset_store",
    "open_dataset",
    "FORMAT_VERSION",
    "check_fingerprint",
    "FeatureSplit",
    "FeatureWriter",
    "list_feature_stores",
    "open_features",
    "open_feature_writer",
    "iterate_batches",
]
