"""Reading ``torch.save`` files without running any code from them.

A zip checkpoint (every ``torch.save`` since torch 1.6) is read by torch's own
``torch.load(weights_only=True)``. Before it runs, torch's public
``get_unsafe_globals_in_checkpoint`` lists the globals the file names beyond tensors; each is
allowed through torch's public ``safe_globals`` as the checked stand-in of
:mod:`extract.safe_pickle`: numpy's array reconstruction as its checked builders, every other
class or function as an :class:`~extract.safe_pickle.Inert` placeholder that records its
arguments and state and is never the original. Modules ``os``/``posix``/``nt``/``sys`` are
refused. The checkpoints' training state (optimizers, meters, message hubs, argparse
namespaces) thus loads as inert data next to the weights.

A legacy (non-zip) file is read by the restricted reader, :class:`CheckpointUnpickler`
(:class:`extract.safe_pickle.Unpickler` with tensors): ``torch.load``'s public
``pickle_module`` argument hands it every pickle in the file, and tensors are rebuilt here
from public torch calls. So is a zip file that torch's reader cannot parse although nothing
in it is refused: it lacks pickle protocol 4's opcodes (``torch.save(pickle_protocol=4)``)
and fills no container but dict, list, OrderedDict and Counter (a ``defaultdict``, a dict
subclass of an absent package). A TorchScript archive holds code and is refused.
"""

from __future__ import annotations

import pickle
import re
import types
import warnings
import zipfile
from collections import Counter, OrderedDict, defaultdict, deque
from pathlib import Path
from typing import Any, Callable

import torch

from cache import MidprobeError
from extract import safe_pickle
from extract.safe_pickle import (NUMPY_CALLABLE, NUMPY_VALUES, ArrayBuilder, DtypeBuilder, Inert, Refused,
                                 blocked, describe, placeholder, python3_name, resolve)

__all__ = ["Inert", "describe", "read_torch_file"]


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any = False,
                    backward_hooks: Any = None, metadata: Any = None) -> torch.Tensor:
    """``torch._utils._rebuild_tensor``/``_v2`` of a legacy file: a view of a typed storage
    (``Tensor.set_`` checks that it lies inside it); hooks and Python attributes are dropped."""
    if not isinstance(storage, torch.storage.TypedStorage):
        raise Refused(f"tensor over {describe(storage)} refused; expected a storage of the file")
    return _view(storage.untyped(), storage.dtype, storage_offset, size, stride, requires_grad)


def _rebuild_tensor_v3(storage: Any, storage_offset: Any, size: Any, stride: Any, requires_grad: Any,
                       backward_hooks: Any, dtype: Any, metadata: Any = None) -> torch.Tensor:
    if not isinstance(storage, torch.UntypedStorage) or not isinstance(dtype, torch.dtype):
        raise Refused(f"tensor over {describe(storage)} refused; expected a storage of the file and a dtype")
    return _view(storage, dtype, storage_offset, size, stride, requires_grad)


def _view(storage: torch.UntypedStorage, dtype: torch.dtype, offset: Any, size: Any, stride: Any,
          requires_grad: Any) -> torch.Tensor:
    ok = (isinstance(size, tuple) and isinstance(stride, tuple) and len(size) == len(stride)
          and all(type(n) is int and n >= 0 for n in (offset, *size, *stride)) and type(requires_grad) is bool)
    # Tensor.set_ would grow a storage too small for the view: a forged layout is refused instead
    last = offset + sum((n - 1) * st for n, st in zip(size, stride)) if ok and all(size) else -1
    if not ok or (last + 1) * dtype.itemsize > storage.nbytes():
        raise Refused(f"tensor layout (offset {offset!r}, size {size!r}, stride {stride!r}) refused; expected a "
                      "view inside its storage")
    tensor = torch.empty((0,), dtype=dtype, device=storage.device).set_(storage, offset, size, stride)
    tensor.requires_grad_(requires_grad)
    return tensor


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> torch.nn.Parameter:
    """``torch._utils._rebuild_parameter`` (``_with_state``): hooks and Python state are dropped."""
    if type(data) is not torch.Tensor or type(requires_grad) is not bool:
        raise Refused(f"parameter of {describe(data)} refused; expected a tensor")
    return torch.nn.Parameter(data, requires_grad)


class CheckpointUnpickler(safe_pickle.Unpickler):
    """The restricted reader with tensors and the containers training state uses; other
    globals become placeholders."""

    CALLABLE: dict[str, Callable[..., Any]] = {
        **NUMPY_CALLABLE,
        "torch._utils._rebuild_tensor": _rebuild_tensor, "torch._utils._rebuild_tensor_v2": _rebuild_tensor,
        "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
        "torch._utils._rebuild_parameter": _rebuild_parameter,
        "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
        "torch.Size": torch.Size, "torch.device": torch.device,
        **{f"collections.{c.__name__}": c for c in (OrderedDict, Counter, defaultdict, deque)},
        "builtins.set": set, "builtins.frozenset": frozenset,
    }
    # values the file may name but never call: dtypes, storage types, defaultdict factories
    VALUES: dict[str, Any] = {
        **NUMPY_VALUES,
        **{f"torch.{name}": v for name, v in vars(torch).items() if isinstance(v, torch.dtype)},
        "torch.UntypedStorage": torch.UntypedStorage, "torch.storage.UntypedStorage": torch.UntypedStorage,
        **{f"builtins.{c.__name__}": c for c in (list, dict, tuple, int, float, str, bool, bytes)},
    }
    PLACEHOLDERS = True


# what torch.load(pickle_module=...) uses of a pickle module: Unpickler, and load for the header records
_RESTRICTED_PICKLE = types.ModuleType(f"{__name__}.restricted_pickle")
_RESTRICTED_PICKLE.Unpickler = CheckpointUnpickler
_RESTRICTED_PICKLE.load = lambda file, **kwargs: CheckpointUnpickler(file, **kwargs).load()

# Globals torch's weights_only reader may see in a zip file besides its own, as checked stand-ins.
# The builder classes are listed so that torch hands their pickled state to their checks.
_ZIP_STANDINS: dict[str, Any] = {
    **NUMPY_CALLABLE, **NUMPY_VALUES,
    "collections.defaultdict": defaultdict, "collections.deque": deque,
    "builtins.set": set, "builtins.frozenset": frozenset,
}
_BUILDERS = [(ArrayBuilder, f"{safe_pickle.__name__}.ArrayBuilder"), (DtypeBuilder, f"{safe_pickle.__name__}.DtypeBuilder")]


def _read_zip(path: Path) -> Any:
    standins = []
    for name in sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path))):
        known = python3_name(*name.rsplit(".", 1)) if "." in name else name    # torch.save writes protocol 2
        if blocked(name) or blocked(known):
            raise Refused(f"refusing to load {known if known.isprintable() else repr(known)}: modules "
                          f"{', '.join(safe_pickle.BLOCKED_MODULES)} are never loaded from a pickle")
        standins.append((_ZIP_STANDINS[name] if name in _ZIP_STANDINS else placeholder(known), name))
    with torch.serialization.safe_globals(_BUILDERS + standins):
        return resolve(torch.load(str(path), map_location="cpu", weights_only=True))


def _is_torchscript(path: Path) -> bool:
    """Whether a zip file is a TorchScript archive (torch.jit.save): it holds ``constants.pkl``."""
    with zipfile.ZipFile(path) as archive:
        return any(name.split("/", 1)[-1] == "constants.pkl" for name in archive.namelist())


def _reason(exc: BaseException) -> str:
    """The one line of an exception worth showing: torch's refusals come wrapped in advice to
    turn its checks off, which is never passed on."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    text = re.split(r"\s*Please use `torch.serialization|\s*Check the documentation", text)[0]
    line = (text.splitlines() or [""])[0][:200]
    return type(exc).__name__ if not line or "weights_only" in line else line


def read_torch_file(path: Path) -> Any:
    """The object in a ``torch.save`` file (zip or legacy format), built without running its code.

    Tensors come back as tensors (on the CPU), numpy arrays as arrays, plain containers as
    themselves, every other pickled object as an :class:`Inert` placeholder. A refused or
    unreadable file is a one-line :class:`MidprobeError` naming it.
    """
    path = Path(path)
    try:
        is_zip = zipfile.is_zipfile(path)
        if is_zip and _is_torchscript(path):
            raise MidprobeError(f"{path} is a TorchScript archive (torch.jit.save), which holds code; "
                                "expected a torch.save checkpoint")
        with warnings.catch_warnings():
            # torch's notes on TypedStorage and on module sources concern nothing a user can act on
            warnings.simplefilter("ignore")
            if is_zip:
                try:
                    return _read_zip(path)
                except pickle.UnpicklingError:
                    pass    # an opcode or container torch's reader lacks: the restricted reader below has them
            return torch.load(str(path), map_location="cpu", weights_only=False, pickle_module=_RESTRICTED_PICKLE)
    except MidprobeError:
        raise
    except Exception as exc:
        raise MidprobeError(f"cannot read {path} as a torch.save checkpoint ({_reason(exc)}); expected "
                            "tensors, numpy arrays and plain data") from None
