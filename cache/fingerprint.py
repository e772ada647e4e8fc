"""Fingerprints: what a feature store was computed from, so features are never mixed."""

from __future__ import annotations

from typing import Any, Mapping

from cache.errors import MidprobeError

#: Bumped whenever the on-disk layout changes; stores of another version are refused.
FORMAT_VERSION = 1

#: The fields every feature-store fingerprint carries, in the order errors report them.
FINGERPRINT_FIELDS = (
    "format_version",
    "model",
    "weights",
    "timm_version",
    "layers",
    "input_size",
    "mean",
    "std",
    "feature_norm",
    "dataset",
    "dataset_fingerprint",
    "split",
)


def _normal(value: Any) -> Any:
    """Tuples and lists compare equal once stored as JSON."""
    if isinstance(value, (list, tuple)):
        return [_normal(v) for v in value]
    if isinstance(value, float):
        return round(value, 9)
    return value


def check_fingerprint(*, stored: Mapping[str, Any], expected: Mapping[str, Any], where: str) -> None:
    """Raise a one-line :class:`MidprobeError` naming the first field that differs.

    Only the fields present in ``expected`` are compared, so a reader may pin just the
    dataset fingerprint, or everything.
    """
    for field in FINGERPRINT_FIELDS + tuple(k for k in expected if k not in FINGERPRINT_FIELDS):
        if field not in expected:
            continue
        if _normal(stored.get(field)) != _normal(expected[field]):
            raise MidprobeError(
                f"feature store {where} has {field}={stored.get(field)!r} but {expected[field]!r} was asked for; "
                "features of different origins are never mixed — re-extract into a fresh store or ask for the stored one")
