"""Checkpoint reading runs no code from the file: training state loads as inert data, weights as tensors."""

from __future__ import annotations

import argparse
import io
import pickle
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cache import MidprobeError
from extract.backbones import build_backbone, checkpoints as ck
from extract import safe_pickle
from extract.backbones import unpickle
from extract.backbones.unpickle import Inert, read_torch_file
from tests import checkpoint_formats as fmt


class _Reduces:
    """Pickles as ``func(*args)``: what a malicious checkpoint's ``__reduce__`` returns."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


class _Builds(_Reduces):
    """Pickles as ``func(*args)`` followed by BUILD with ``state``."""

    def __init__(self, func, args, state):
        super().__init__(func, *args)
        self.state = state

    def __reduce__(self):
        return self.func, self.args, self.state


def _legacy_file(path: Path, payload: bytes) -> None:
    """A legacy (non-zip) torch.save file whose object pickle is ``payload``, written by hand."""
    from torch.serialization import MAGIC_NUMBER, PROTOCOL_VERSION

    with open(path, "wb") as handle:
        for record in (MAGIC_NUMBER, PROTOCOL_VERSION, {"protocol_version": PROTOCOL_VERSION, "little_endian": True}):
            pickle.dump(record, handle, protocol=2)
        handle.write(payload)
        pickle.dump([], handle, protocol=2)       # storage keys: none


@pytest.fixture
def gadget_module():
    """A module, importable while loading, whose class runs code in ``__init__`` and ``__setstate__``."""
    module = types.ModuleType("midprobe_test_gadgets")

    class Gadget:
        def __init__(self, sentinel):
            self.sentinel = sentinel
            Path(sentinel).touch()

        def __setstate__(self, state):
            Path(state["sentinel"]).touch()

    Gadget.__module__, Gadget.__qualname__ = module.__name__, "Gadget"
    module.Gadget = Gadget
    sys.modules[module.__name__] = module
    yield Gadget
    del sys.modules[module.__name__]


PAYLOADS = {      # posix.system is refused outright: tests/test_safe_pickle.py
    "builtins.eval": lambda s: _Reduces(eval, f"open({str(s)!r}, 'w').close()"),
    "builtins.exec": lambda s: _Reduces(exec, f"open({str(s)!r}, 'w').close()"),
    "subprocess.Popen": lambda s: _Reduces(subprocess.Popen, ["touch", str(s)]),
}


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_reduce_payloads_run_nothing_and_become_placeholders_naming_the_global(name, zip_format, tmp_path):
    sentinel = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.arange(3.0)}, "payload": PAYLOADS[name](sentinel)}, path,
               _use_new_zipfile_serialization=zip_format)
    obj = read_torch_file(path)
    assert not sentinel.exists()
    assert torch.equal(obj["state_dict"]["w"], torch.arange(3.0))
    payload = obj["payload"]
    assert isinstance(payload, Inert) and payload.global_name == name
    assert str(sentinel) in str(payload.args)


def test_a_class_with_side_effects_is_never_constructed_or_given_its_state(gadget_module, tmp_path):
    sentinel = tmp_path / "pwned"
    gadget = gadget_module(str(tmp_path / "made-while-saving"))
    gadget.sentinel = str(sentinel)                         # __setstate__ would touch this one
    path = tmp_path / "evil.pth"
    torch.save({"state_dict": {"w": torch.ones(2)}, "gadget": gadget, "built": _Reduces(gadget_module, str(sentinel))},
               path)
    obj = read_torch_file(path)                             # the module is importable: it is still not used
    assert not sentinel.exists()
    assert obj["gadget"].global_name == "midprobe_test_gadgets.Gadget"
    assert obj["gadget"].state == {"sentinel": str(sentinel)}
    assert obj["built"].global_name == "midprobe_test_gadgets.Gadget" and obj["built"].args == (str(sentinel),)


def test_calling_what_a_placeholder_returned_is_refused(tmp_path):
    sentinel = tmp_path / "pwned"
    # getattr(__import__('os'), 'system')('touch ...'), hand-written in pickle protocol 0
    payload = (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(Vtouch " + str(sentinel).encode()
               + b"\ntR.")
    path = tmp_path / "chain.pth"
    _legacy_file(path, payload)
    with pytest.raises(MidprobeError, match="refusing to call a pickled builtins.getattr object"):
        read_torch_file(path)
    assert not sentinel.exists()
    with pytest.raises(safe_pickle.Refused, match="extension codes refused"):
        safe_pickle.load_numpy(io.BytesIO(b"\x80\x02\x82\x01."))          # EXT1 1


def test_a_pickled_module_is_a_placeholder_even_when_its_class_is_importable(tmp_path):
    layer = torch.nn.Linear(2, 3)
    for zip_format in (True, False):
        path = tmp_path / f"model-{zip_format}.pth"
        torch.save({"model": layer, "state_dict": layer.state_dict()}, path, _use_new_zipfile_serialization=zip_format)
        obj = read_torch_file(path)
        assert isinstance(obj["model"], Inert) and obj["model"].global_name == "torch.nn.modules.linear.Linear"
        assert torch.equal(obj["state_dict"]["weight"], layer.weight.detach())
        assert obj["state_dict"]._metadata == layer.state_dict()._metadata


def test_zip_files_go_to_torchs_reader_and_legacy_or_protocol_4_ones_to_the_restricted_reader(monkeypatch, tmp_path):
    calls = []
    load = torch.load

    def spy(*args, **kwargs):
        calls.append((kwargs["weights_only"], kwargs.get("pickle_module")))
        return load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    record = {"model": {"w": torch.ones(1)}, "args": argparse.Namespace(lr=0.1), "rng": np.random.default_rng(0),
              "numbers": np.arange(3), "seen": 2.0}
    restricted = (False, unpickle._RESTRICTED_PICKLE)
    for options, expected in (({}, [(True, None)]), ({"_use_new_zipfile_serialization": False}, [restricted]),
                              ({"pickle_protocol": 4}, [restricted])):       # torch's reader lacks FRAME
        calls.clear()
        torch.save(record, tmp_path / "ckpt.pth", **options)
        obj = read_torch_file(tmp_path / "ckpt.pth")
        assert calls == expected, options
        assert obj["args"].global_name == "argparse.Namespace" and obj["args"].state == {"lr": 0.1}
        assert obj["rng"].global_name == "numpy.random._pickle.__generator_ctor"
        assert obj["numbers"].tolist() == [0, 1, 2] and torch.equal(obj["model"]["w"], torch.ones(1))


def test_training_state_of_the_sources_loads_as_data_without_importing_their_packages(tmp_path):
    state = {"conv1.weight": torch.arange(6.0).reshape(1, 6), "bn1.running_var": torch.ones(3)}
    fmt.mmselfsup_resnet(state, tmp_path / "mm.pth")
    obj = read_torch_file(tmp_path / "mm.pth")
    assert "mmengine" not in sys.modules
    hub = obj["message_hub"]
    assert hub.global_name == "mmengine.logging.message_hub.MessageHub"
    loss = hub.state["_log_scalars"]["train/loss"]
    assert loss.global_name == "mmengine.logging.history_buffer.HistoryBuffer"
    np.testing.assert_array_equal(loss.state["_log_history"], [0.5, 0.25])
    assert hub.state["_runtime_info"]["loss_scale"] == np.float32(512.0)
    assert obj["optimizer"]["state"][0]["momentum_buffer"].shape == (4, 8)
    assert torch.equal(ck.convert(obj, ck.MMSELFSUP_RESNET, source="mm")["conv1.weight"], state["conv1.weight"])

    fmt.vissl(state, tmp_path / "vissl.torch")
    obj = read_torch_file(tmp_path / "vissl.torch")
    classy = obj["classy_state_dict"]
    assert classy["meters"][0].global_name == "vissl.meters.accuracy_list_meter.AccuracyListMeter"
    assert classy["losses"] == [np.float64(5.21), np.float64(5.19)]
    assert set(classy["optimizer"]["optim"]["state"][1]) == {"momentum_buffer"}
    assert set(ck.convert(obj, ck.VISSL, source="vissl")) == set(state)


def test_containers_arrays_and_newer_pickle_protocols(tmp_path, monkeypatch):
    class Config(dict):                      # a dict subclass of an absent package (mmengine's ConfigDict, addict)
        pass

    class History(list):
        pass

    Config.__module__ = History.__module__ = "absent_package.config"
    Config.__qualname__, History.__qualname__ = "Config", "History"
    module = types.ModuleType("absent_package.config")
    module.Config, module.History = Config, History
    monkeypatch.setitem(sys.modules, "absent_package", types.ModuleType("absent_package"))
    monkeypatch.setitem(sys.modules, "absent_package.config", module)
    record = {"cfg": Config(lr=0.1), "history": History([1, 2]), "tags": {"a", "b"}, "frozen": frozenset({1}),
              "names": np.array(["ab", "c"]),
              "grid": np.arange(6, dtype=np.float32).reshape(2, 3).T, "flag": np.bool_(True),
              "blob": b"\x00\xff", "shape": torch.Size([2, 3]), "half": torch.arange(4, dtype=torch.float16),
              "param": torch.nn.Parameter(torch.ones(2))}
    for protocol in (2, 4):
        path = tmp_path / f"p{protocol}.pth"
        torch.save(record, path, pickle_protocol=protocol)
        obj = read_torch_file(path)
        assert obj["cfg"].global_name == "absent_package.config.Config" and obj["cfg"].items == [("lr", 0.1)]
        assert obj["history"].items == [1, 2]
        assert obj["tags"] == {"a", "b"} and obj["frozen"] == frozenset({1}) and obj["blob"] == b"\x00\xff"
        assert obj["names"].tolist() == ["ab", "c"]
        np.testing.assert_array_equal(obj["grid"], record["grid"])
        assert obj["flag"] is np.True_ and obj["shape"] == torch.Size([2, 3])
        assert obj["half"].dtype == torch.float16 and isinstance(obj["param"], torch.nn.Parameter)


_RECONSTRUCT, _SCALAR = np.array(0.0).__reduce__()[0], np.float64(0.0).__reduce__()[0]
FORGED_NUMPY = {   # numpy trusts pickled state: these would read bytes of the file as object pointers
    "float64 dtype flagged as holding objects": _Builds(
        _RECONSTRUCT, (np.ndarray, (0,), b"b"),
        (1, (1,), _Builds(np.dtype, ("f8", False, True), (3, "<", None, None, None, -1, -1, 63)), False, [1.5])),
    "object array from raw bytes": _Builds(
        _RECONSTRUCT, (np.ndarray, (0,), b"b"),
        (1, (1,), _Builds(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 63)), False, b"\x01" * 8)),
    "object dtype with its flags cleared": _Builds(np.dtype, ("O8", False, True),
                                                   (3, "|", None, None, None, -1, -1, 0)),
    "object scalar from raw bytes": _Reduces(_SCALAR, np.dtype("O"), b"\x01" * 8),
    "fewer bytes than the shape": _Builds(_RECONSTRUCT, (np.ndarray, (0,), b"b"),
                                          (1, (4,), np.dtype("f8"), False, b"\x00" * 8)),
    "structured dtype": np.zeros(2, dtype=[("x", "<f4")]),
    "object array": np.array([1, "x", None], dtype=object),
    "object scalar dtype": np.dtype(object),
}


@pytest.mark.parametrize("name", sorted(FORGED_NUMPY))
def test_numpy_state_that_would_forge_pointers_is_refused(name, tmp_path):
    torch.save({"state_dict": {"w": torch.ones(1)}, "forged": FORGED_NUMPY[name]}, tmp_path / "forged.pth")
    with pytest.raises(MidprobeError, match="numpy .*refused"):
        read_torch_file(tmp_path / "forged.pth")


def test_a_placeholder_where_the_backbone_must_be_names_the_key(tmp_path):
    path = tmp_path / "densecl.pth"
    torch.save({"state_dict": {"conv1.weight": np.random.default_rng(0), "bn1.weight": torch.ones(1)}}, path)
    with pytest.raises(MidprobeError, match=r"'conv1.weight' is a pickled numpy.random._pickle.__generator_ctor "
                                            r"object \(kept as inert data\), expected a tensor"):
        build_backbone("rn50_densecl", weights=str(path))
    torch.save({"classy_state_dict": {"base_model": {"model": {"trunk": argparse.Namespace()}}}}, path)
    with pytest.raises(MidprobeError, match="expected a state dict at classy_state_dict/base_model/model/trunk, "
                                            "found a pickled argparse.Namespace object"):
        build_backbone("rn50_simclr", weights=str(path))


def test_local_weights_files_with_training_state_load_and_foreign_weights_are_named(tmp_path):
    reference = build_backbone("test_vit_tiny")
    state = reference.module.model.state_dict()
    path = tmp_path / "checkpoint-799.pth"       # an MAE-style training checkpoint
    torch.save({"model": state, "optimizer": fmt.optimizer_state("adamw"), "epoch": 799,
                "scaler": {"scale": 1024.0}, "args": argparse.Namespace(model="vit_base"),
                "rng": np.random.default_rng(0)}, path)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(build_backbone("test_vit_tiny", weights=path)(x)[1], reference(x)[1])
    torch.save({"model": {**state, "norm.weight": argparse.Namespace()}}, path)
    with pytest.raises(MidprobeError, match="'norm.weight' is a pickled argparse.Namespace object"):
        build_backbone("test_vit_tiny", weights=path)


def test_no_message_passes_on_torchs_advice_to_turn_safety_off(gadget_module, tmp_path):
    bad = {"garbage.pth": lambda p: p.write_bytes(b"\x00not a checkpoint" * 10),
           "truncated.pth": lambda p: (torch.save({"w": torch.ones(8)}, p), p.write_bytes(p.read_bytes()[:100])),
           "chain.pth": lambda p: _legacy_file(p, b"cbuiltins\ngetattr\n(Vx\nVy\ntR(tR."),
           "scripted.pt": lambda p: torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), p),
           "gadget.pth": lambda p: torch.save({"state_dict": {"conv1.weight": gadget_module(str(tmp_path / "g"))}}, p)}
    messages = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for name, write in bad.items():
            path = tmp_path / name
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")     # torch.jit's own deprecation notes while writing the fixture
                write(path)
            for model in ("rn50_densecl", "test_vit_tiny"):
                with pytest.raises(MidprobeError, match=re.escape(str(path))) as err:     # each names the file
                    build_backbone(model, weights=str(path))
                messages.append(str(err.value))
    messages += [str(w.message) for w in caught]
    assert any("TorchScript archive" in m for m in messages) and any("refusing to call" in m for m in messages)
    assert len(messages) >= 2 * len(bad)
    assert not [m for m in messages if "weights_only" in m or "\n" in m]


class _ForgedView:
    """Pickles as a float tensor of 100000 elements over a storage of 4."""

    def __reduce__(self):
        storage = torch.storage.TypedStorage(wrap_storage=torch.arange(4.0).untyped_storage(), dtype=torch.float32,
                                             _internal=True)
        return torch._utils._rebuild_tensor_v2, (storage, 0, (100000,), (1,), False, {})


@pytest.mark.parametrize("zip_format", [True, False], ids=["zip", "legacy"])
def test_a_tensor_view_beyond_its_storage_is_refused(zip_format, tmp_path):
    path = tmp_path / "view.pth"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # TypedStorage's deprecation note while writing the fixture
        torch.save({"w": _ForgedView()}, path, _use_new_zipfile_serialization=zip_format)
    with pytest.raises(MidprobeError, match=r"view.pth as a torch.save checkpoint \((tensor layout .* refused; "
                                            r"expected a view inside its storage|Trying to resize storage)"):
        read_torch_file(path)
