"""What a function is, as a checkpoint can record it: its code and every value it is bound to.

A resumed run must be the same run, so its configuration identifies the
functions that decide what training computes (the optimizer's ``init`` and
``update``, an ``augment`` or a stream's ``transform``) by what defines
them, not by a name or a short trial: :func:`identify` walks a callable and
everything it holds, and gives

- a **digest** (SHA-256) of the walk, the same in every process for the same
  code and values, and different when any of them differs;
- its **values**: every number, string and array (by its own digest) met on
  the way, by the path that reaches it (``update.learning_rate.decay_steps``),
  so that a refused resume names the setting that changed;
- what it could **not identify**: an object holding no inspectable state
  (a C extension's object, say), which the caller reports in one line.

The walk follows:

- a Python function: its module, qualified name and bytecode (the constants
  and names its code uses, nested functions' code too), its defaults, the
  contents of its closure's cells (by the variable's name), and the global
  names its code reads that hold values or functions of its own module;
- ``functools.partial``: the function, its arguments and keywords;
- a bound method: the object and the function;
- an object with attributes (a callable class, optax's ``MultiSteps``): its
  class, its ``__call__``'s code where it has one, and every attribute;
- containers (tuples, lists, dicts, named tuples) element by element;
- NumPy and JAX arrays by dtype, shape and bytes; numbers and strings by value;
  a module, class, builtin or ufunc by its qualified name; an fnn module by
  :meth:`fnn.module.Module.describe`.
"""

import dataclasses
import functools
import hashlib
import numbers
import types

import jax
import numpy as np

from fnn.module import Loss, Module

__all__ = ["Identity", "identify"]

#: Nesting beyond which the walk stops and reports what it did not reach.
MAX_DEPTH = 48
#: Values listed per identity at most (the digest covers the rest).
MAX_VALUES = 256


@dataclasses.dataclass(frozen=True)
class Identity:
    """What :func:`identify` found: ``digest`` (hex), ``values`` (``{path: value}``) and ``unidentified`` (paths)."""

    digest: str
    values: dict
    unidentified: tuple

    def to_json(self):
        return {"digest": self.digest, "values": self.values, "unidentified": list(self.unidentified)}


def identify(value, name="fn"):
    """The :class:`Identity` of ``value`` (a function, a callable object, any value), its paths rooted at ``name``."""
    walk = _Walk()
    walk.visit(value, name, 0)
    return Identity(walk.hash.hexdigest(), dict(list(walk.values.items())[:MAX_VALUES]), tuple(walk.unidentified))


def _qualified(obj):
    return f"{getattr(obj, '__module__', None) or ''}.{getattr(obj, '__qualname__', None) or type(obj).__name__}"


class _Walk:
    def __init__(self):
        self.hash = hashlib.sha256()
        self.values, self.unidentified = {}, []
        self.active = set()  # ids on the current path: a cycle is named, not followed
        self.done = {}  # id -> path where a shared object was first walked

    def emit(self, *parts):
        for part in parts:
            self.hash.update(str(part).encode())
            self.hash.update(b"\x00")

    def visit(self, obj, path, depth):
        if depth > MAX_DEPTH:
            self.unidentified.append(f"{path} (nested too deeply)")
            self.emit("deep")
            return
        if obj is None or isinstance(obj, (bool, str, bytes, numbers.Number, np.generic)):
            self._scalar(obj, path)
            return
        if isinstance(obj, (type, types.ModuleType, types.BuiltinFunctionType, np.ufunc, np.dtype)):
            self.emit("named", _qualified(obj) if not isinstance(obj, np.dtype) else obj.str)
            return
        if isinstance(obj, (np.ndarray, jax.Array)):
            self._array(obj, path)
            return
        key = id(obj)
        if key in self.active:
            self.emit("cycle", path)
            return
        if key in self.done:  # shared: walked once, referred to by where
            self.emit("same as", self.done[key])
            return
        self.active.add(key)
        try:
            self._compound(obj, path, depth + 1)
        finally:
            self.active.discard(key)
            self.done[key] = path

    def _scalar(self, obj, path):
        value = obj.item() if isinstance(obj, np.generic) else obj
        self.emit(type(value).__name__, repr(value))
        if isinstance(value, (numbers.Number, str)) and not isinstance(value, bool):
            self.values[path] = value if isinstance(value, (int, float, str)) else repr(value)

    def _array(self, obj, path):
        if isinstance(obj, jax.Array) and jax.dtypes.issubdtype(obj.dtype, jax.dtypes.prng_key):
            obj = jax.random.key_data(obj)
        a = np.asarray(obj)
        digest = hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()[:16]
        self.emit("array", a.dtype.str, a.shape, digest)
        self.values[path] = a.item() if a.size == 1 else f"{a.dtype}{list(a.shape)} #{digest}"

    def _compound(self, obj, path, depth):
        if isinstance(obj, (Module, Loss)):
            self.emit("fnn", repr(obj.describe()))
        elif isinstance(obj, tuple) and hasattr(obj, "_fields"):  # a named tuple: optax's GradientTransformation
            self.emit("namedtuple", _qualified(type(obj)))
            for field, item in zip(obj._fields, obj):
                self.visit(item, f"{path}.{field}", depth)
        elif isinstance(obj, (tuple, list)):
            self.emit(type(obj).__name__, len(obj))
            for i, item in enumerate(obj):
                self.visit(item, f"{path}[{i}]", depth)
        elif isinstance(obj, dict):
            self.emit("dict", len(obj))
            for k in sorted(obj, key=repr):
                self.emit(repr(k))
                self.visit(obj[k], f"{path}[{k!r}]", depth)
        elif isinstance(obj, (set, frozenset)):
            self.emit("set", sorted(map(repr, obj)))
        elif isinstance(obj, functools.partial):
            self.emit("partial")
            self.visit(obj.func, f"{path}.func", depth)
            self.visit(obj.args, f"{path}.args", depth)
            self.visit(obj.keywords, f"{path}.keywords", depth)
        elif isinstance(obj, types.MethodType):
            self.emit("method")
            self.visit(obj.__func__, f"{path}.{obj.__func__.__name__}", depth)
            self.visit(obj.__self__, path, depth)
        elif isinstance(obj, types.FunctionType):
            self._function(obj, path, depth)
        elif isinstance(obj, types.CodeType):
            self._code(obj)
        elif hasattr(obj, "__wrapped__") and callable(obj):  # jax.jit and other wrappers
            self.emit("wrapped", _qualified(type(obj)))
            self.visit(obj.__wrapped__, path, depth)
        else:
            self._object(obj, path, depth)

    def _function(self, fn, path, depth):
        self.emit("function", _qualified(fn))
        self._code(fn.__code__)
        self.visit(fn.__defaults__, f"{path}.<defaults>", depth)
        self.visit(fn.__kwdefaults__, f"{path}.<kwdefaults>", depth)
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or ()):
            try:
                content = cell.cell_contents
            except ValueError:  # a cell not yet filled
                self.emit("empty cell", var)
                continue
            self.emit("cell", var)
            self.visit(content, f"{path}.{var}", depth)
        module = fn.__globals__.get("__name__")
        for var in sorted(_global_names(fn.__code__)):
            if var not in fn.__globals__:
                continue
            found = fn.__globals__[var]
            own = isinstance(found, (types.FunctionType, type)) and getattr(found, "__module__", None) == module
            if own and isinstance(found, types.FunctionType):
                self.emit("global", var)
                self.visit(found, f"{path}.<global {var}>", depth)
            elif found is None or isinstance(found, (numbers.Number, str, np.ndarray, tuple, frozenset)):
                self.emit("global", var)
                self.visit(found, f"{path}.<global {var}>", depth)

    def _code(self, code):
        self.emit("code", code.co_name, code.co_code, code.co_names, code.co_varnames, code.co_freevars)
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                self._code(const)
            elif isinstance(const, frozenset):
                self.emit("const set", sorted(map(repr, const)))
            else:
                self.emit("const", type(const).__name__, repr(const))

    def _object(self, obj, path, depth):
        cls = type(obj)
        self.emit("object", _qualified(cls))
        call = next((vars(c)["__call__"] for c in cls.__mro__ if "__call__" in vars(c)), None)
        if isinstance(call, types.FunctionType):
            self._code(call.__code__)
        attributes = _attributes(obj)
        if attributes is None:
            self.unidentified.append(f"{path} ({cls.__name__})")
            return
        for name in sorted(attributes):
            self.emit("attribute", name)
            self.visit(attributes[name], f"{path}.{name}", depth)


def _attributes(obj):
    """An object's attributes (``__dict__`` and ``__slots__``), or ``None`` where it keeps none Python can read."""
    found = dict(getattr(obj, "__dict__", {}) or {})
    for cls in type(obj).__mro__:
        for slot in getattr(cls, "__slots__", ()):
            if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                found[slot] = getattr(obj, slot)
    if not found and not hasattr(obj, "__dict__") and not any(getattr(c, "__slots__", ()) for c in type(obj).__mro__):
        return None
    return found


def _global_names(code):
    """The names ``code`` (and code nested in it) reads that may be globals."""
    names = set(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names |= _global_names(const)
    return names
