"""The emulated ``cupy.ndarray`` and the wrapping of NumPy functions under CuPy's names and rules.

What CuPy does and this reproduces (each is a bug class the CPU leg cannot see):

* arrays are not NumPy arrays: ``numpy.asarray(x)`` / ``__array__`` raise ``TypeError``; the host
  copy is explicit (``x.get()``, ``cupy.asnumpy(x)``) and counted as a sync;
* NumPy arrays are rejected as operands of ufuncs, functions, ``copyto`` and kernels
  ("Unsupported type"), in both orders (``numpy_array + x`` goes through ``__array_ufunc__``);
* reductions, scalar indexing and predicates (``allclose``, ``array_equal``, ``count_nonzero``)
  return 0-d arrays, not Python/NumPy scalars; ``float(x)``, ``bool(x)``, ``.item()`` are syncs;
* there is no ``__index__``: a device scalar cannot size a ``range`` or index a list;
* only names the installed CuPy has (``cupy_names.json``) exist; a NumPy-only name is an
  ``AttributeError`` as on a GPU machine.
"""
from __future__ import annotations

import functools
import json
import operator
from pathlib import Path

import numpy as np

from .transfers import record_h2d, record_sync

NAMES = json.loads(Path(__file__).with_name("cupy_names.json").read_text())
NDARRAY_NAMES = frozenset(NAMES["classes"]["cupy.ndarray"])

# CuPy functions that accept host data (they are the explicit host->device copies)
HOST_INPUT_FUNCTIONS = frozenset({"array", "asarray", "asanyarray", "ascontiguousarray", "asfortranarray"})
# functions that answer about metadata with Python values in CuPy too
METADATA_FUNCTIONS = frozenset({
    "ndim", "shape", "size", "result_type", "can_cast", "isscalar", "iscomplexobj", "isrealobj",
    "min_scalar_type", "common_type", "issubdtype", "promote_types", "broadcast_shapes",
    "get_array_module", "may_share_memory", "shares_memory", "binary_repr", "base_repr",
})
# functions whose output shape depends on the data: CuPy waits for the device to size them
SYNCING_FUNCTIONS = frozenset({"nonzero", "argwhere", "flatnonzero", "unique", "compress", "extract",
                               "unique_values", "unique_counts", "unique_inverse", "unique_all",
                               "trim_zeros"})


# (function, argument position) pairs that are shapes, axes or split points, not array data:
# CuPy turns any sequence there, a NumPy array included, into a tuple
SHAPE_ARGUMENTS = {"split": (1,), "array_split": (1,), "pad": (1,), "tile": (1,), "reshape": (1,),
                   "broadcast_to": (1,), "transpose": (1,), "zeros": (0,), "ones": (0,), "empty": (0,),
                   "full": (0,), "moveaxis": (1, 2), "unravel_index": (1,), "ravel_multi_index": (1,)}


def unsupported(value) -> TypeError:
    return TypeError(f"Unsupported type {type(value)}")


class ndarray:
    """A device array: a NumPy array the host may only read through explicit, counted copies."""

    __slots__ = ("_a", "__weakref__")
    __array_priority__ = 100
    __hash__ = None

    def __init__(self, shape, dtype=float, memptr=None, strides=None, order="C"):
        if memptr is not None or strides is not None:
            raise TypeError("emulated cupy.ndarray: memptr/strides construction is not emulated")
        self._a = np.empty(shape, dtype=dtype, order=order)

    # -- what CuPy refuses -------------------------------------------------------------------
    def __array__(self, dtype=None, copy=None):
        raise TypeError("Implicit conversion to a NumPy array is not allowed. "
                        "Please use `.get()` to construct a NumPy array explicitly.")

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        func = MODULE_FUNCTIONS.get(ufunc.__name__)
        if method != "__call__" or func is None:
            return NotImplemented
        return func(*inputs, **kwargs)

    def __array_function__(self, func, types, args, kwargs):
        ours = MODULE_FUNCTIONS.get(func.__name__)
        if ours is None:
            return NotImplemented
        return ours(*args, **kwargs)

    # -- explicit transfers ------------------------------------------------------------------
    def get(self, stream=None, order="C", out=None, blocking=True):
        """Copy to a NumPy array (the explicit device->host transfer; a sync)."""
        record_sync("ndarray.get")
        result = np.array(self._a, order=order if order != "A" else "K")
        if out is not None:
            out[...] = result
            return out
        return result

    def set(self, arr, stream=None):
        """Copy a host array into this array (the explicit host->device transfer)."""
        if not isinstance(arr, np.ndarray):
            raise TypeError(f"Only numpy.ndarray can be set to cupy.ndarray, got {type(arr)}")
        if arr.shape != self._a.shape or arr.dtype != self._a.dtype:
            raise ValueError("Shape or dtype mismatch")
        record_h2d("ndarray.set")
        self._a[...] = arr

    def item(self, *args):
        record_sync("ndarray.item")
        return self._a.item(*args)

    def tolist(self):
        record_sync("ndarray.tolist")
        return self._a.tolist()

    def _scalar(self, kind):
        if self._a.size != 1:
            raise TypeError(f"only length-1 arrays can be converted to Python scalars ({kind})")
        record_sync(f"ndarray.__{kind}__")
        return self._a.reshape(()).item()

    def __bool__(self):
        if self._a.size != 1:
            raise ValueError("The truth value of an array with more than one element is ambiguous.")
        record_sync("ndarray.__bool__")
        return bool(self._a)

    def __float__(self):
        return float(self._scalar("float"))

    def __int__(self):
        return int(self._scalar("int"))

    def __complex__(self):
        return complex(self._scalar("complex"))

    def __repr__(self):
        record_sync("ndarray.__repr__")
        return repr(self._a)

    def __str__(self):
        record_sync("ndarray.__str__")
        return str(self._a)

    def __format__(self, spec):
        if self._a.ndim == 0:
            return format(self._scalar("format"), spec)
        return format(str(self), spec)

    # -- containers ----------------------------------------------------------------------------
    def __len__(self):
        if self._a.ndim == 0:
            raise TypeError("len() of unsized object")
        return len(self._a)

    def __iter__(self):
        if self._a.ndim == 0:
            raise TypeError("iteration over a 0-d array")
        return (self[i] for i in range(len(self._a)))

    def __getitem__(self, key):
        k = index_key(key)
        out = self._a[k]
        if isinstance(out, np.generic):
            # CuPy's basic indexing returns a view even for an all-integer key (_ndarray_getitem
            # returns _view_getitem's 0-d view); NumPy gives a scalar copy, its 0-d view needs a ...
            out = self._a[(k if isinstance(k, tuple) else (k,)) + (Ellipsis,)]
        return wrap(out)

    def __setitem__(self, key, value):
        if isinstance(value, np.ndarray) and value.ndim > 0:
            record_h2d("ndarray.__setitem__ with a numpy.ndarray")
            v = value
        else:
            v = to_numpy_operand(value)
        self._a[index_key(key)] = v

    def __copy__(self):
        return wrap(self._a.copy())

    def __deepcopy__(self, memo):
        return wrap(self._a.copy())

    def __reduce__(self):
        record_sync("pickle")
        return (_rebuild, (np.array(self._a),))

    # -- attributes ------------------------------------------------------------------------------
    @property
    def device(self):
        from .cuda import Device
        return Device(0)

    @property
    def data(self):
        return _MemoryPointer(self._a)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "version": 3,
                "data": (self._a.ctypes.data, False),
                "strides": None if self._a.flags.c_contiguous else self._a.strides}

    def __getattr__(self, name):
        if name.startswith("_") or name not in NDARRAY_NAMES:
            raise AttributeError(f"'cupy.ndarray' object has no attribute '{name}'")
        value = getattr(self._a, name)
        if callable(value):
            return _method(value, name)
        return wrap(value)

    def __setattr__(self, name, value):
        if name == "_a":
            object.__setattr__(self, name, value)
        elif name == "shape":
            self._a.shape = value
        else:
            raise AttributeError(f"'cupy.ndarray' object attribute '{name}' is read-only")


def _rebuild(host):
    return wrap(host)


class _MemoryPointer:
    """``x.data``: the device pointer (``.ptr``) of an array."""

    def __init__(self, a):
        self.ptr = a.ctypes.data


def wrap(value):
    """NumPy results -> device results: arrays and NumPy scalars become (0-d) device arrays."""
    if isinstance(value, np.ndarray):
        return ndarray_from(value)
    if isinstance(value, np.generic):
        return ndarray_from(np.asarray(value))
    if isinstance(value, tuple):
        return tuple(wrap(v) for v in value)
    if isinstance(value, list):
        return [wrap(v) for v in value]
    return value


def ndarray_from(a: np.ndarray) -> ndarray:
    out = ndarray.__new__(ndarray)
    object.__setattr__(out, "_a", a)
    return out


def to_numpy_operand(value, where="operand"):
    """A device array or a scalar as NumPy sees it; a host array is refused as CuPy refuses it."""
    if isinstance(value, ndarray):
        return value._a
    if isinstance(value, np.ndarray):
        if value.ndim == 0:
            return value[()]  # CuPy treats a 0-d host array as a scalar
        raise unsupported(value)
    if isinstance(value, (list, tuple)):
        return type(value)(to_numpy_operand(v, where) for v in value)
    if isinstance(value, dict):
        return {k: to_numpy_operand(v, where) for k, v in value.items()}
    return value


def index_key(key):
    """An index as NumPy sees it; host index arrays are copied to the device, masks sync."""
    if isinstance(key, tuple):
        return tuple(_index_part(k) for k in key)
    return _index_part(key)


def _index_part(k):
    if isinstance(k, ndarray):
        if k._a.dtype == np.bool_ and k._a.ndim > 0:
            record_sync("boolean mask indexing")
        return k._a
    if isinstance(k, np.ndarray):
        if k.ndim > 0:
            record_h2d("indexing with a numpy.ndarray")
        return k
    if isinstance(k, list):
        record_h2d("indexing with a list")
        return np.asarray(to_numpy_operand(k))
    return k


def _method(bound, name):
    @functools.wraps(bound)
    def call(*args, **kwargs):
        if name in ("nonzero",):
            record_sync(f"ndarray.{name}")
        if name == "fill":
            return bound(to_numpy_operand(args[0]))
        result = bound(*to_numpy_operand(args), **to_numpy_operand(kwargs))
        return wrap(result)
    return call


def _binary(name):
    op = getattr(operator, name)

    def method(self, other):
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise unsupported(other)
        if not isinstance(other, (ndarray, np.ndarray, np.generic, int, float, complex, bool)):
            return NotImplemented
        return wrap(op(self._a, to_numpy_operand(other)))

    def reflected(self, other):
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise unsupported(other)
        if not isinstance(other, (np.ndarray, np.generic, int, float, complex, bool)):
            return NotImplemented
        return wrap(op(to_numpy_operand(other), self._a))

    def inplace(self, other):
        if isinstance(other, np.ndarray) and other.ndim > 0:
            raise unsupported(other)
        # operator spells the in-place forms iand/ior (no trailing underscore, unlike and_/or_)
        getattr(operator, "i" + name.rstrip("_"))(self._a, to_numpy_operand(other))
        return self

    return method, reflected, inplace


for _name in ("add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "and", "or", "xor",
              "lshift", "rshift"):
    _opname = {"and": "and_", "or": "or_"}.get(_name, _name)
    _m, _r, _i = _binary(_opname)
    setattr(ndarray, f"__{_name}__", _m)
    setattr(ndarray, f"__r{_name}__", _r)
    setattr(ndarray, f"__i{_name}__", _i)
for _name in ("lt", "le", "eq", "ne", "gt", "ge"):
    setattr(ndarray, f"__{_name}__", _binary(_name)[0])
for _name in ("neg", "pos", "abs", "invert"):
    setattr(ndarray, f"__{_name}__", (lambda op: lambda self: wrap(op(self._a)))(getattr(operator, _name)))
ndarray.__divmod__ = lambda self, other: wrap(divmod(self._a, to_numpy_operand(other)))


# -- functions ---------------------------------------------------------------------------------
def wrap_function(func, name):
    """CuPy's ``name`` built on NumPy's ``func``: device arrays in, device arrays (0-d for scalars) out."""
    host_ok = name in HOST_INPUT_FUNCTIONS

    @functools.wraps(func)
    def call(*args, **kwargs):
        if host_ok:
            if args and isinstance(args[0], ndarray):
                return wrap(func(args[0]._a, *args[1:], **to_numpy_operand(kwargs)))
            record_h2d(f"cupy.{name} of host data")
            host = [a if isinstance(a, np.ndarray) else to_numpy_operand(a) for a in args]
            # a device copy never aliases the host array it came from
            return wrap(np.array(func(*host, **to_numpy_operand(kwargs)), copy=True))
        if name in SYNCING_FUNCTIONS:
            record_sync(f"cupy.{name}")
        if name == "bincount" and kwargs.get("minlength") is None and len(args) < 3:
            record_sync("cupy.bincount without minlength")
        if name == "repeat" and isinstance(args[1] if len(args) > 1 else kwargs.get("repeats"), ndarray):
            record_sync("cupy.repeat with array repeats")
        shape_positions = SHAPE_ARGUMENTS.get(name, ())
        args = tuple(tuple(a.tolist()) if i in shape_positions and isinstance(a, np.ndarray) else a
                     for i, a in enumerate(args))
        result = func(*to_numpy_operand(args), **to_numpy_operand(kwargs))
        if name in METADATA_FUNCTIONS:
            return result
        if isinstance(result, (bool, int, float, complex)) and not isinstance(result, np.generic):
            return ndarray_from(np.asarray(result))
        return wrap(result)

    call.__module__ = "cupy"
    return call


def copyto(dst, src, casting="same_kind", where=None):
    """``cupy.copyto``: a host source must hold one element (CuPy raises ValueError otherwise)."""
    if not isinstance(dst, ndarray):
        raise TypeError(f"copyto: destination must be a cupy.ndarray, got {type(dst)}")
    if isinstance(src, np.ndarray):
        if src.size != 1:
            raise ValueError("non-scalar numpy.ndarray cannot be used for copyto")
        src = src.reshape(())[()]
    elif not isinstance(src, (ndarray, bool, int, float, complex, np.generic)):
        raise AttributeError(f"'{type(src).__name__}' object has no attribute 'dtype'")
    np.copyto(dst._a, to_numpy_operand(src), casting=casting,
              where=True if where is None else to_numpy_operand(where))


def asnumpy(a, stream=None, order="C", out=None, blocking=True):
    """``cupy.asnumpy``: the explicit device->host copy (a sync for a device array)."""
    if isinstance(a, ndarray):
        return a.get(order=order, out=out)
    return np.asarray(a, order=order)


def get_array_module(*args):
    import cupy
    return cupy if any(isinstance(a, ndarray) for a in args) else np


MODULE_FUNCTIONS: dict = {}  # name -> wrapped function, filled by module.build_cupy
