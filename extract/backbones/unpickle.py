"""Reading ``torch.save`` files without running any code from them.

:func:`read_torch_file` first asks ``torch.load(weights_only=True)``; when torch refuses the
file (a global it does not know, an opcode its reader lacks, numpy data), it reads the file
again with this module as ``torch.load``'s ``pickle_module``. This module's :class:`Unpickler`
rebuilds tensors, storages and Parameters (torch's own rebuild functions), numpy arrays,
dtypes and scalars of plain types (their pickled state checked, never trusted), and plain
containers; every other global becomes an :class:`Inert` record of its dotted name and of the
arguments and state the pickle meant for it. No module is imported by name, and no
constructor, ``__setstate__`` or ``__reduce__`` callable outside the allow-list below ever
runs: the checkpoints' training state (optimizers, meters, hooks, message hubs, argparse
namespaces) loads as inert data next to the weights.
"""

from __future__ import annotations

import _compat_pickle
import codecs
import math
import pickle
import re
import sys
import warnings
from collections import Counter, OrderedDict, defaultdict, deque
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from cache import MidprobeError

UnpicklingError = pickle.UnpicklingError


class Inert:
    """What a checkpoint pickled of a global that is not on the allow-list, kept as data.

    ``global_name`` is the dotted name the pickle referred to (e.g.
    ``mmengine.logging.message_hub.MessageHub``); ``args``/``kwargs`` what its constructor or
    reduce function would have been called with; ``state`` what its ``__setstate__`` would
    have received; ``items`` what the pickle appended to it (list items, or ``(key, value)``
    pairs for dict subclasses). The original class is never imported. A global that the file
    only refers to (never calls) stays a class: ``placeholder(name)`` itself.
    """

    global_name = ""
    __slots__ = ("args", "kwargs", "state", "items")

    def __new__(cls, *args: Any, **kwargs: Any) -> "Inert":
        obj = super().__new__(cls)
        obj.args, obj.kwargs, obj.state, obj.items = args, kwargs, None, []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # torch's weights_only reader calls tolerated classes; __new__ has recorded everything
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"<inert {self.global_name}>"


def placeholder(name: str) -> type[Inert]:
    """A fresh :class:`Inert` class standing for the global ``name`` (``module.qualname``)."""
    # a module name that is never imported: torch's legacy reader looks for the source of pickled
    # nn.Module classes, and finds none here; a name with control characters is kept escaped,
    # so error messages naming it stay on one line
    return type("Inert", (Inert,), {"__slots__": (), "global_name": name if name.isprintable() else repr(name),
                                    "__module__": f"{__name__}.<placeholders>"})


def describe(value: Any) -> str:
    """How an error message names a loaded value: placeholders by their global's name."""
    if isinstance(value, Inert):
        return f"a pickled {value.global_name} object (kept as inert data)"
    if isinstance(value, type) and issubclass(value, Inert):
        return f"a reference to {value.global_name} (kept as inert data)"
    if isinstance(value, type):
        return f"the type {value.__module__}.{value.__qualname__}"
    return f"a {type(value).__name__}"


_MULTIARRAY = (np._core if hasattr(np, "_core") else np.core).multiarray   # numpy 2 moved numpy.core to numpy._core
# numpy data rebuilt: booleans, integers, floats, complex numbers, fixed-size byte and unicode
# strings, and objects (arrays of them only from listed items, never from raw bytes)
_NUMPY_TYPES = re.compile(r"b1|[iu][1248]|f[248]|c(8|16)|[SU][1-9][0-9]*|O8?")


def _numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> np.dtype:
    """``numpy.dtype(spec)`` for the plain types above, always a fresh copy. numpy trusts a
    dtype's pickled state (its flags decide whether bytes are object pointers), so that state
    is only compared with this dtype (:func:`_check_dtype_state`), never handed to numpy."""
    if not isinstance(spec, str) or not _NUMPY_TYPES.fullmatch(spec):
        raise UnpicklingError(f"numpy dtype {spec!r} refused; expected a plain number, string or object type")
    return np.dtype(spec, align=False, copy=True)


def _check_dtype_state(dtype: np.dtype, state: Any) -> None:
    """A dtype's pickled state must describe, in native byte order, the dtype already built."""
    ok = (type(state) is tuple and len(state) == 8 and all(type(state[i]) is int for i in (0, 5, 6, 7))
          and state[0] == 3 and type(state[1]) is str and state[1] in ("<", ">", "|", "=")
          and all(x is None for x in state[2:5]) and state[5] in (-1, dtype.itemsize)
          and state[6] in (-1, dtype.alignment) and state[7] == dtype.flags)
    if not ok or dtype.newbyteorder(state[1]) != dtype:
        raise UnpicklingError(f"numpy dtype state {state!r} refused; expected that of a native-order {dtype}")


def _numpy_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct``: an empty plain ndarray, filled by BUILD (:func:`_build_array`)."""
    if subtype is not np.ndarray:
        raise UnpicklingError(f"numpy array of {describe(subtype)} refused; expected numpy.ndarray")
    return np.empty(0, dtype=np.int8)


def _build_array(array: np.ndarray, state: Any) -> None:
    """``ndarray.__setstate__`` on a checked state: a dtype made by :func:`_numpy_dtype` and
    exactly the bytes (for objects: the listed items) its shape holds."""
    ok = type(state) is tuple and len(state) == 5
    if ok:
        version, shape, dtype, fortran, data = state
        ok = (type(version) is int and version == 1 and type(fortran) is bool and isinstance(dtype, np.dtype)
              and type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape))
    if ok:
        count = math.prod(shape)
        ok = (type(data) is list and len(data) == count if dtype.hasobject
              else type(data) in (bytes, bytearray) and len(data) == count * dtype.itemsize)
    if not ok:
        raise UnpicklingError("numpy array state refused; expected a shape, a plain dtype and that many items")
    array.__setstate__((1, shape, dtype, fortran, data))


def _numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's ``scalar``: a number or string from exactly its bytes (no object scalars)."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject or type(data) is not bytes or len(data) != dtype.itemsize:
        raise UnpicklingError(f"numpy scalar of {describe(dtype)} refused; expected a plain dtype and its bytes")
    return _MULTIARRAY.scalar(dtype, data)


def _latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, the way pickle protocol 2 stores ``bytes`` (latin-1 only)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise UnpicklingError(f"_codecs.encode with encoding {encoding!r} refused; expected latin1")
    return codecs.encode(text, "latin1")


# Globals that may be called while unpickling (by dotted name, as the pickle spells them);
# each one builds a tensor, an array or a plain container and runs no code of the file's.
_CALLABLE: dict[str, Callable[..., Any]] = {
    **{f"torch._utils.{f}": getattr(torch._utils, f) for f in (
        "_rebuild_tensor", "_rebuild_tensor_v2", "_rebuild_tensor_v3",
        "_rebuild_parameter", "_rebuild_parameter_with_state")},
    "torch.Size": torch.Size, "torch.device": torch.device,
    **{f"{m}.multiarray.{f}": fn for m in ("numpy.core", "numpy._core")
       for f, fn in (("_reconstruct", _numpy_array), ("scalar", _numpy_scalar))},
    "numpy.dtype": _numpy_dtype, "_codecs.encode": _latin1_bytes,
    **{f"collections.{c.__name__}": c for c in (OrderedDict, Counter, defaultdict, deque)},
    "builtins.set": set, "builtins.frozenset": frozenset,
}
# Globals that may appear as values but are never called by the file (dtypes, storage types,
# the ndarray type numpy's _reconstruct receives, defaultdict factories).
_VALUES: dict[str, Any] = {
    **{f"torch.{name}": v for name, v in vars(torch).items() if isinstance(v, torch.dtype)},
    "torch.UntypedStorage": torch.UntypedStorage, "torch.storage.UntypedStorage": torch.UntypedStorage,
    "numpy.ndarray": np.ndarray,
    **{f"builtins.{c.__name__}": c for c in (list, dict, tuple, int, float, str, bool, bytes)},
}
_CALLABLE_IDS = {id(f): f for f in _CALLABLE.values()}
_DICTS = (dict, OrderedDict, Counter, defaultdict)


class Unpickler(pickle._Unpickler):
    """A pickle reader that calls only the allow-listed globals and never imports by name.

    Used by ``torch.load(..., weights_only=False, pickle_module=<this module>)``: torch
    subclasses ``Unpickler`` (its ``find_class`` maps storage type names first) and sets
    ``persistent_load`` to its own storage reader. Every opcode that could call, construct or
    mutate an object is replaced: REDUCE/NEWOBJ/INST/OBJ call only the allow-list (or record
    an :class:`Inert`), BUILD sets state only on placeholders, numpy arrays/dtypes and
    OrderedDicts, APPEND/SETITEM/ADDITEMS fill only built-in containers and placeholders.
    """

    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._placeholders: dict[str, type[Inert]] = {}

    def find_class(self, module: str, name: str) -> Any:
        if self.proto < 3 and self.fix_imports:          # Python 2 names, as pickle itself maps them
            if (module, name) in _compat_pickle.NAME_MAPPING:
                module, name = _compat_pickle.NAME_MAPPING[(module, name)]
            elif module in _compat_pickle.IMPORT_MAPPING:
                module = _compat_pickle.IMPORT_MAPPING[module]
        dotted = f"{module}.{name}"
        if dotted in _CALLABLE:
            return _CALLABLE[dotted]
        if dotted in _VALUES:
            return _VALUES[dotted]
        if dotted not in self._placeholders:
            self._placeholders[dotted] = placeholder(dotted)
        return self._placeholders[dotted]

    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if isinstance(func, type) and issubclass(func, Inert):
            return func(*args, **kwargs)
        if _CALLABLE_IDS.get(id(func)) is func:
            return func(*args, **kwargs)
        raise UnpicklingError(f"refusing to call {describe(func)}; only tensors, arrays and plain data are rebuilt")

    def load_reduce(self) -> None:
        args = self.stack.pop()
        self.stack[-1] = self._call(self.stack[-1], args)

    def load_newobj(self) -> None:
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, {}))

    def load_newobj_ex(self) -> None:
        kwargs = self.stack.pop()
        args = self.stack.pop()
        cls = self.stack.pop()
        self.append(self._new(cls, args, kwargs))

    def _new(self, cls: Any, args: Any, kwargs: Any) -> Any:
        # torch.save writes allow-listed objects through REDUCE; NEWOBJ is how pickle
        # protocol 2 writes instances of ordinary classes, which are never allow-listed
        if isinstance(cls, type) and issubclass(cls, Inert):
            return cls(*args, **kwargs)
        raise UnpicklingError(f"refusing to construct {describe(cls)} with NEWOBJ")

    def _instantiate(self, klass: Any, args: list[Any]) -> None:     # INST and OBJ (pickle protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert):
            inst.state = state
        elif type(inst) is np.ndarray:
            _build_array(inst, state)
        elif isinstance(inst, np.dtype):
            _check_dtype_state(inst, state)
        elif type(inst) in _DICTS and isinstance(state, dict) and all(type(k) is str for k in state):
            inst.__dict__.update(state)              # an OrderedDict's _metadata (every nn.Module state dict)
        else:
            raise UnpicklingError(f"refusing to set the state of {describe(inst)}")

    def load_append(self) -> None:
        value = self.stack.pop()
        self._extend(self.stack[-1], [value])

    def load_appends(self) -> None:
        items = self.pop_mark()
        self._extend(self.stack[-1], items)

    def _extend(self, target: Any, items: list[Any]) -> None:
        if type(target) is list:
            target.extend(items)
        elif isinstance(target, Inert):
            target.items.extend(items)
        else:
            raise UnpicklingError(f"refusing to append to {describe(target)}")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list[Any]) -> None:
        pairs = list(zip(items[::2], items[1::2]))
        if type(target) in _DICTS:
            for key, value in pairs:
                target[key] = value
        elif isinstance(target, Inert):
            target.items.extend(pairs)
        else:
            raise UnpicklingError(f"refusing to set items on {describe(target)}")

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        elif isinstance(target, Inert):
            target.items.extend(items)
        else:
            raise UnpicklingError(f"refusing to add items to {describe(target)}")

    def load_extension(self) -> None:
        # copyreg's extension registry is process-wide; torch.save never uses it
        raise UnpicklingError("pickle extension codes refused")


Unpickler.dispatch.update({op[0]: method for op, method in (
    (pickle.REDUCE, Unpickler.load_reduce), (pickle.NEWOBJ, Unpickler.load_newobj),
    (pickle.NEWOBJ_EX, Unpickler.load_newobj_ex), (pickle.BUILD, Unpickler.load_build),
    (pickle.APPEND, Unpickler.load_append), (pickle.APPENDS, Unpickler.load_appends),
    (pickle.SETITEM, Unpickler.load_setitem), (pickle.SETITEMS, Unpickler.load_setitems),
    (pickle.ADDITEMS, Unpickler.load_additems), (pickle.EXT1, Unpickler.load_extension),
    (pickle.EXT2, Unpickler.load_extension), (pickle.EXT4, Unpickler.load_extension))})


def load(file: Any, **kwargs: Any) -> Any:
    """``pickle.load`` through :class:`Unpickler` (torch reads a legacy file's header records with it)."""
    return Unpickler(file, **kwargs).load()


# What the weights_only reader is told to tolerate on its first pass (argparse args of DINO/iBOT/
# MAE training checkpoints, mmengine log buffers): the same placeholders the restricted reader
# makes, so both passes give the same objects. numpy is not on it: torch's reader would hand
# numpy the pickled dtype states unchecked, so files with numpy data go to the second pass.
_TOLERATED: list[Any] = [(placeholder(name), name) for name in (
    "argparse.Namespace", "mmengine.logging.history_buffer.HistoryBuffer")]


def _is_torchscript(path: Path) -> bool:
    """Whether torch.load would hand this file to torch.jit.load (same test as torch.load's)."""
    with open(path, "rb") as handle:
        if not torch.serialization._is_zipfile(handle):
            return False
        with torch.serialization._open_zipfile_reader(handle) as archive:
            return torch.serialization._is_torchscript_zip(archive)


def _reason(exc: BaseException) -> str:
    line = (str(exc).strip().splitlines() or [""])[0][:200]
    # torch's own refusals advise turning the safety off; that advice is never passed on
    return type(exc).__name__ if not line or "weights_only" in line else line


def read_torch_file(path: Path) -> Any:
    """The object in a ``torch.save`` file (zip or legacy format), built without running its code.

    Tensors come back as tensors (on the CPU), numpy arrays as arrays, plain containers as
    themselves, every other pickled object as an :class:`Inert` placeholder.
    """
    path = Path(path)
    with warnings.catch_warnings():
        # torch's notes on pickle protocols and on module sources concern the first pass's refusals
        warnings.simplefilter("ignore")
        try:
            with torch.serialization.safe_globals(_TOLERATED):
                return torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:
            pass        # whatever torch refuses is read below, where unknown globals become placeholders
        try:
            # torch.load hands TorchScript archives to torch.jit.load, which compiles their code
            torchscript = _is_torchscript(path)
            obj = None if torchscript else torch.load(str(path), map_location="cpu", weights_only=False,
                                                      pickle_module=sys.modules[__name__])
        except Exception as exc:
            raise MidprobeError(f"cannot read {path} as a torch.save checkpoint ({_reason(exc)}); expected "
                                "tensors, numpy arrays and plain data") from None
    if torchscript:
        raise MidprobeError(f"{path} is a TorchScript archive (torch.jit.save), which holds code; "
                            "expected a torch.save checkpoint")
    return obj
