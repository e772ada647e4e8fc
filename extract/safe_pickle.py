"""One restricted pickle reader for every pickle midprobe opens: checkpoints and dataset files.

A pickle is a program: every global it names can be called with arguments of its choosing.
:class:`Unpickler` runs none of it. It calls only the globals on its allow-list (numpy's array
reconstruction here; a subclass adds torch's tensors), never imports a module by name, and
checks every piece of numpy state before numpy sees it:

- a dtype is rebuilt from its type code only (booleans, integers, floats, complex numbers,
  fixed-size byte and unicode strings); the flags and sizes of its pickled state must match the
  dtype just built. numpy itself trusts those flags, and an *object* dtype flag on a float dtype
  makes numpy read the file's bytes as object pointers (a crash, or worse);
- an array gets exactly the bytes its shape and dtype hold, and only of those dtypes: no object
  arrays, no structured or subarray dtypes, no ndarray subclasses;
- modules ``os``, ``posix``, ``nt`` and ``sys`` are refused outright (torch's reader refuses
  the same ones); any other global outside the allow-list is refused (dataset files) or,
  where a subclass asks for it (checkpoints), kept as an :class:`Inert` record of its name
  and arguments that is never called.

A refusal raises :class:`Refused`; the callers turn it into a one-line error naming the file,
and nothing of the file is returned. numpy arrays and dtypes are built through small builder
objects (:class:`ArrayBuilder`, :class:`DtypeBuilder`) that :func:`resolve` swaps for the
finished arrays once the whole pickle is read, so torch's own ``weights_only`` reader can use
the same checked builders for zip checkpoints (``extract.backbones.unpickle``).
"""

from __future__ import annotations

import _compat_pickle
import codecs
import math
import pickle
import re
from collections import Counter, OrderedDict, defaultdict
from typing import Any, Callable

import numpy as np

#: modules no pickle may name (the same list as torch's weights_only reader)
BLOCKED_MODULES = ("os", "posix", "nt", "sys")


class Refused(ValueError):
    """A pickle asked for something the reader never does. Not an ``UnpicklingError``, so torch's
    reader passes it on as it is instead of wrapping it in advice to turn its checks off."""


class Inert:
    """What a pickle held of a global that is not on the allow-list, kept as data.

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
    shown = name if name.isprintable() else repr(name)
    return type("Inert", (Inert,), {"__slots__": (), "global_name": shown, "__qualname__": shown,
                                    "__module__": f"{__name__}.<placeholders>"})


def python3_name(module: str, name: str) -> str:
    """The dotted name of a global as Python 3 knows it: pickle protocols 0-2 write some
    modules under their Python 2 names (``subprocess.Popen`` as ``commands.Popen``)."""
    if (module, name) in _compat_pickle.NAME_MAPPING:
        module, name = _compat_pickle.NAME_MAPPING[(module, name)]
    elif module in _compat_pickle.IMPORT_MAPPING:
        module = _compat_pickle.IMPORT_MAPPING[module]
    return f"{module}.{name}"


def describe(value: Any) -> str:
    """How an error message names a loaded value: placeholders by their global's name."""
    if isinstance(value, Inert):
        return f"a pickled {value.global_name} object (kept as inert data)"
    if isinstance(value, type) and issubclass(value, Inert):
        return f"a reference to {value.global_name} (kept as inert data)"
    if isinstance(value, type):
        return f"the type {value.__module__}.{value.__qualname__}"
    return f"a {type(value).__name__}"


def blocked(dotted: str) -> bool:
    """Whether a global's dotted name lies in one of :data:`BLOCKED_MODULES`."""
    return dotted.split(".", 1)[0] in BLOCKED_MODULES


# ---------------------------------------------------------------- numpy, checked

_MULTIARRAY = (np._core if hasattr(np, "_core") else np.core).multiarray   # numpy 2 moved numpy.core to numpy._core
# booleans, integers, floats, complex numbers, fixed-size byte and unicode strings: never objects
_NUMPY_TYPES = re.compile(r"b1|[iu][1248]|f[248]|c(8|16)|[SU][1-9][0-9]*")


class NdarrayRef:
    """What the name ``numpy.ndarray`` stands for in a pickle: a marker for :func:`numpy_array`,
    never the class itself (calling ``numpy.ndarray`` builds arrays from raw buffers)."""

    def __repr__(self) -> str:
        return "numpy.ndarray"


NDARRAY = NdarrayRef()


class DtypeBuilder:
    """A dtype from :func:`numpy_dtype`; its pickled state is checked, never handed to numpy."""

    __slots__ = ("dtype",)

    def __init__(self, dtype: np.dtype) -> None:
        self.dtype = dtype

    def __setstate__(self, state: Any) -> None:
        self.dtype = _checked_dtype(self.dtype, state)


class ArrayBuilder:
    """An array from :func:`numpy_array`, filled by its pickled state (:meth:`__setstate__`)."""

    __slots__ = ("array",)

    def __init__(self) -> None:
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        self.array = _build_array(state)


def numpy_dtype(spec: Any, align: Any = False, copy: Any = True) -> DtypeBuilder:
    """``numpy.dtype(spec)`` for the plain types above, always a fresh copy."""
    if not isinstance(spec, str) or not _NUMPY_TYPES.fullmatch(spec):
        raise Refused(f"numpy dtype {spec!r} refused; expected a plain number or string type (no objects)")
    return DtypeBuilder(np.dtype(spec, align=False, copy=True))


def _checked_dtype(dtype: np.dtype, state: Any) -> np.dtype:
    """The dtype already built, in the byte order its pickled state names; the rest of the
    state (sizes, flags; no fields, names or subarrays) must describe exactly that dtype."""
    ok = (type(state) is tuple and len(state) == 8 and all(type(state[i]) is int for i in (0, 5, 6, 7))
          and state[0] == 3 and type(state[1]) is str and state[1] in ("<", ">", "|", "=")
          and all(x is None for x in state[2:5]) and state[5] in (-1, dtype.itemsize)
          and state[6] in (-1, dtype.alignment) and state[7] == dtype.flags)
    if not ok or (state[1] == "|" and dtype.itemsize > 1 and dtype.kind not in "SU"):
        raise Refused(f"numpy dtype state {state!r} refused; expected that of a plain {dtype}")
    return dtype.newbyteorder(state[1]) if state[1] in "<>" else dtype


def numpy_array(subtype: Any, shape: Any, dtype: Any) -> ArrayBuilder:
    """numpy's ``_reconstruct``: a plain ndarray to come, built from its checked state."""
    if subtype is not NDARRAY:
        raise Refused(f"numpy array of {describe(subtype)} refused; expected numpy.ndarray")
    return ArrayBuilder()


def _build_array(state: Any) -> np.ndarray:
    """``ndarray.__setstate__`` on a checked state: a dtype made by :func:`numpy_dtype` and
    exactly the bytes its shape holds."""
    ok = type(state) is tuple and len(state) == 5
    if ok:
        version, shape, dtype, fortran, data = state
        ok = (type(version) is int and version == 1 and type(fortran) is bool and type(dtype) is DtypeBuilder
              and type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape)
              and type(data) in (bytes, bytearray) and len(data) == math.prod(shape) * dtype.dtype.itemsize)
    if not ok:
        raise Refused("numpy array state refused; expected a shape, a plain dtype and that many bytes")
    array = np.empty(0, dtype=np.int8)
    array.__setstate__((1, shape, dtype.dtype, fortran, data))
    return array


def numpy_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's ``_frombuffer`` (pickle protocol 5): a copy of exactly the bytes the shape holds."""
    ok = (type(buf) in (bytes, bytearray) and type(dtype) is DtypeBuilder and order in ("C", "F")
          and type(shape) is tuple and all(type(n) is int and n >= 0 for n in shape)
          and len(buf) == math.prod(shape) * dtype.dtype.itemsize)
    if not ok:
        raise Refused("numpy buffer refused; expected a plain dtype, a shape and that many bytes")
    return np.frombuffer(bytes(buf), dtype=dtype.dtype).reshape(shape, order=order).copy(order="K")


def numpy_scalar(dtype: Any, data: Any = None) -> Any:
    """numpy's ``scalar``: a number or string from exactly its bytes (no object scalars)."""
    if type(dtype) is not DtypeBuilder or type(data) is not bytes or len(data) != dtype.dtype.itemsize:
        raise Refused(f"numpy scalar of {describe(dtype)} refused; expected a plain dtype and its bytes")
    return _MULTIARRAY.scalar(dtype.dtype, data)


def latin1_bytes(text: Any, encoding: Any = "latin1") -> bytes:
    """``_codecs.encode``, the way pickle protocol 2 stores ``bytes`` (latin-1 only)."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise Refused(f"_codecs.encode with encoding {encoding!r} refused; expected latin1")
    return codecs.encode(text, "latin1")


#: numpy's array reconstruction, by the names numpy 1 and 2 pickle it under: what may be called
NUMPY_CALLABLE: dict[str, Callable[..., Any]] = {
    **{f"{m}.multiarray.{f}": fn for m in ("numpy.core", "numpy._core")
       for f, fn in (("_reconstruct", numpy_array), ("scalar", numpy_scalar))},
    **{f"{m}.numeric._frombuffer": numpy_frombuffer for m in ("numpy.core", "numpy._core")},
    "numpy.dtype": numpy_dtype, "_codecs.encode": latin1_bytes,
}
#: ... and what may appear only as a value
NUMPY_VALUES: dict[str, Any] = {"numpy.ndarray": NDARRAY}


def resolve(obj: Any, _done: dict[int, Any] | None = None) -> Any:
    """``obj`` with every builder replaced by its array or dtype, containers updated in place
    (so shared references stay shared). A builder whose state never came is refused."""
    done = {} if _done is None else _done
    key = id(obj)
    if key in done:
        return done[key]
    if type(obj) is ArrayBuilder:
        if obj.array is None:
            raise Refused("numpy array without its data refused")
        done[key] = obj.array
    elif type(obj) is DtypeBuilder:
        done[key] = obj.dtype
    elif type(obj) in (dict, OrderedDict, Counter, defaultdict):
        done[key] = obj
        for k, v in list(obj.items()):
            obj[k] = resolve(v, done)
    elif type(obj) is list:
        done[key] = obj
        obj[:] = [resolve(v, done) for v in obj]
    elif type(obj) is tuple:
        done[key] = tuple(resolve(v, done) for v in obj)
    elif isinstance(obj, Inert):
        done[key] = obj
        obj.args, obj.kwargs = resolve(obj.args, done), resolve(obj.kwargs, done)
        obj.state, obj.items = resolve(obj.state, done), resolve(obj.items, done)
    else:
        done[key] = obj      # numbers, strings, tensors, sets and frozensets (arrays are unhashable)
    return done[key]


# ---------------------------------------------------------------- the reader

class Unpickler(pickle._Unpickler):
    """A pickle reader that calls only the allow-listed globals and never imports by name.

    ``CALLABLE``/``VALUES`` are the allow-list by dotted name; with ``PLACEHOLDERS`` a global
    off the list becomes an :class:`Inert` placeholder, without it a refusal. Every opcode
    that could call, construct or mutate an object is replaced: REDUCE/NEWOBJ/INST/OBJ call
    only the allow-list (or record an :class:`Inert`), BUILD sets state only on placeholders,
    numpy builders and OrderedDicts, APPEND/SETITEM/ADDITEMS fill only built-in containers and
    placeholders. The base class reads numpy arrays in plain containers (dataset pickles).
    """

    CALLABLE: dict[str, Callable[..., Any]] = NUMPY_CALLABLE
    VALUES: dict[str, Any] = NUMPY_VALUES
    PLACEHOLDERS = False
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file: Any, **kwargs: Any) -> None:
        super().__init__(file, **kwargs)
        self._placeholders: dict[str, type[Inert]] = {}
        self._callables = {id(f): f for f in self.CALLABLE.values()}

    def load(self) -> Any:
        return resolve(super().load())

    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names, as pickle itself maps them
        dotted = python3_name(module, name) if self.proto < 3 and self.fix_imports else f"{module}.{name}"
        if blocked(dotted):
            raise Refused(f"refusing to load {dotted if dotted.isprintable() else repr(dotted)}: "
                          f"modules {', '.join(BLOCKED_MODULES)} are never loaded from a pickle")
        if dotted in self.CALLABLE:
            return self.CALLABLE[dotted]
        if dotted in self.VALUES:
            return self.VALUES[dotted]
        if not self.PLACEHOLDERS:
            raise Refused(f"refusing to load {dotted if dotted.isprintable() else repr(dotted)}; "
                          "expected only numpy arrays and plain data")
        if dotted not in self._placeholders:
            self._placeholders[dotted] = placeholder(dotted)
        return self._placeholders[dotted]

    def _call(self, func: Any, args: Any, kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        if isinstance(func, type) and issubclass(func, Inert):
            return func(*args, **kwargs)
        if self._callables.get(id(func)) is func:
            return func(*args, **kwargs)
        raise Refused(f"refusing to call {describe(func)}; only tensors, arrays and plain data are rebuilt")

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
        raise Refused(f"refusing to construct {describe(cls)} with NEWOBJ")

    def _instantiate(self, klass: Any, args: list[Any]) -> None:     # INST and OBJ (pickle protocols 0 and 1)
        self.append(self._call(klass, tuple(args)))

    def load_build(self) -> None:
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, Inert) or type(inst) in (ArrayBuilder, DtypeBuilder):
            inst.__setstate__(state)
        elif type(inst) in (dict, OrderedDict, Counter, defaultdict) and isinstance(state, dict) \
                and all(type(k) is str for k in state):
            inst.__dict__.update(state)              # an OrderedDict's _metadata (every nn.Module state dict)
        else:
            raise Refused(f"refusing to set the state of {describe(inst)}")

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
            raise Refused(f"refusing to append to {describe(target)}")

    def load_setitem(self) -> None:
        value = self.stack.pop()
        key = self.stack.pop()
        self._set_items(self.stack[-1], [key, value])

    def load_setitems(self) -> None:
        items = self.pop_mark()
        self._set_items(self.stack[-1], items)

    def _set_items(self, target: Any, items: list[Any]) -> None:
        pairs = list(zip(items[::2], items[1::2]))
        if type(target) in (dict, OrderedDict, Counter, defaultdict):
            for key, value in pairs:
                target[key] = value
        elif isinstance(target, Inert):
            target.items.extend(pairs)
        else:
            raise Refused(f"refusing to set items on {describe(target)}")

    def load_additems(self) -> None:
        items = self.pop_mark()
        target = self.stack[-1]
        if type(target) is set:
            target.update(items)
        elif isinstance(target, Inert):
            target.items.extend(items)
        else:
            raise Refused(f"refusing to add items to {describe(target)}")

    def load_extension(self) -> None:
        # copyreg's extension registry is process-wide; neither torch.save nor numpy uses it
        raise Refused("pickle extension codes refused")


Unpickler.dispatch.update({op[0]: method for op, method in (
    (pickle.REDUCE, Unpickler.load_reduce), (pickle.NEWOBJ, Unpickler.load_newobj),
    (pickle.NEWOBJ_EX, Unpickler.load_newobj_ex), (pickle.BUILD, Unpickler.load_build),
    (pickle.APPEND, Unpickler.load_append), (pickle.APPENDS, Unpickler.load_appends),
    (pickle.SETITEM, Unpickler.load_setitem), (pickle.SETITEMS, Unpickler.load_setitems),
    (pickle.ADDITEMS, Unpickler.load_additems), (pickle.EXT1, Unpickler.load_extension),
    (pickle.EXT2, Unpickler.load_extension), (pickle.EXT4, Unpickler.load_extension))})


def load_numpy(file: Any) -> Any:
    """numpy arrays and plain containers from an open binary pickle file; anything else is
    :class:`Refused` (and nothing is returned)."""
    return Unpickler(file).load()
