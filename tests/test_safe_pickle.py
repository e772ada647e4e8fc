"""One restricted reader for every pickle: FAIR's gzip pickles and torch checkpoints (zip and legacy)
refuse the same forged numpy state, object arrays and code, each as a one-line error naming the file."""

from __future__ import annotations

import gzip
import io
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from cache import MidprobeError
from extract import safe_pickle
from extract.backbones.unpickle import read_torch_file
from extract.datasets.nyuv2 import ladicky_normals
from extract.datasets.raw import load_numpy_pickle
from tests.dataset_fixtures import write_nyu


class _Reduces:
    """Pickles as ``func(*args)``, then BUILD with ``state`` when one is given."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


_RECONSTRUCT = np.array(0.0).__reduce__()[0]
# a float64 array whose dtype state carries the object flags (63): numpy would take the 8 data
# bytes for an object pointer (a null one here, so a reader that let it through fails the test
# instead of crashing it)
FORGED = _Reduces(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                  (1, (1,), _Reduces(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)),
                   False, b"\x00" * 8))


def _payloads(marker: Path) -> dict[str, tuple[object, str]]:
    """name -> (object to pickle beside real arrays, the refusal expected)."""
    return {"forged dtype": (FORGED, r"numpy dtype state .* refused; expected that of a plain float64"),
            "object array": (np.array([1, "x", None], dtype=object), r"numpy dtype '\|?O8?' refused"),
            "os.system": (_Reduces(os.system, (f"touch {marker}",)),
                          r"refusing to load posix.system: modules os, posix, nt, sys are never loaded")}


def _pklz(path: Path, obj: object) -> None:
    with gzip.open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=2)       # FAIR's files: Python 2's highest protocol


def _pklz5(path: Path, obj: object) -> None:
    with gzip.open(path, "wb") as handle:
        pickle.dump(obj, handle, protocol=5)       # a file re-saved with today's highest protocol


WRITERS = {
    "pklz": (_pklz, load_numpy_pickle),
    "pklz-protocol5": (_pklz5, load_numpy_pickle),
    "pth-zip": (lambda p, obj: torch.save(obj, p), read_torch_file),
    "pth-legacy": (lambda p, obj: torch.save(obj, p, _use_new_zipfile_serialization=False), read_torch_file),
    "pth-zip-protocol4": (lambda p, obj: torch.save(obj, p, pickle_protocol=4), read_torch_file),
}


@pytest.mark.parametrize("payload", ["forged dtype", "object array", "os.system"])
@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_every_pickle_format_refuses_the_same_payloads_in_one_line_naming_the_file(fmt, payload, tmp_path):
    marker = tmp_path / "pwned"
    obj, expected = _payloads(marker)[payload]
    write, read = WRITERS[fmt]
    path = tmp_path / ("all_normals.pklz" if fmt.startswith("pklz") else "weights.pth")
    write(path, {"all_normals": np.ones((2, 3), np.float32), "w": 0 if fmt.startswith("pklz") else torch.ones(2),
                 "payload": obj})
    with pytest.raises(MidprobeError, match=rf"^cannot read {path} .*{expected}") as err:
        read(path)
    assert "\n" not in str(err.value) and "weights_only" not in str(err.value)
    assert not marker.exists()


@pytest.mark.parametrize("fmt", sorted(WRITERS))
def test_plain_arrays_and_containers_load_in_every_format(fmt, tmp_path):
    write, read = WRITERS[fmt]
    path = tmp_path / ("x.pklz" if fmt.startswith("pklz") else "x.pth")
    arrays = {"f": np.arange(6, dtype=np.float32).reshape(2, 3).T, "u": np.array([1, 2], np.uint16),
              "s": np.array(["ab", "c"]), "b": np.array([True, False]), "big": np.arange(3, dtype=">i4")}
    write(path, {**arrays, "nested": [(1, 2.5, "x"), {"k": None}], "scalar": np.float32(1.5), "raw": b"\x00\xff"})
    obj = read(path)
    for key, value in arrays.items():
        np.testing.assert_array_equal(obj[key], value)
        # as numpy's own unpickling: big-endian data comes back in native order, but for protocol 5
        assert obj[key].dtype in (value.dtype, value.dtype.newbyteorder("=")) and type(obj[key]) is np.ndarray
    assert obj["nested"] == [(1, 2.5, "x"), {"k": None}] and obj["raw"] == b"\x00\xff"
    assert obj["scalar"] == np.float32(1.5) and type(obj["scalar"]) is np.float32


def test_a_dataset_pickle_refuses_every_global_but_numpys_arrays(tmp_path):
    # checkpoints keep unknown objects as inert data; a dataset file has no business holding any
    from collections import OrderedDict

    for value, name in ((OrderedDict(a=1), "collections.OrderedDict"), (torch.ones(1), "torch._utils._rebuild_tensor_v2"),
                        (_Reduces(eval, ("1",)), "builtins.eval")):
        with pytest.raises(safe_pickle.Refused, match=rf"refusing to load {name}; expected only numpy arrays"):
            safe_pickle.load_numpy(io.BytesIO(pickle.dumps({"x": value}, protocol=2)))


def test_fairs_normals_file_with_a_payload_stops_the_nyu_reader(tmp_path):
    raw = tmp_path / "nyuv2"
    write_nyu(raw, n=2, train=(1,), test=(2,))
    marker = tmp_path / "pwned"
    good = ladicky_normals(raw)
    assert good[1].shape == (2, 480, 640, 3)
    path = raw / "surfacenormal_metadata" / "all_normals.pklz"
    with gzip.open(path, "rb") as handle:
        content = pickle.load(handle)        # our own fixture, written just above
    _pklz(path, {**content, "all_valid_depth_masks": _Reduces(os.system, (f"touch {marker}",))})
    with pytest.raises(MidprobeError, match=r"all_normals.pklz \(refusing to load posix.system"):
        ladicky_normals(raw)
    assert not marker.exists()
