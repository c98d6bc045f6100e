"""Data types and PyTorch's type-promotion rules.

A :class:`dtype` wraps a NumPy dtype (CuPy uses the same dtype objects), so the
backend arrays carry the type and the Tensor only translates.

Promotion follows PyTorch (``torch.result_type``): operands are ranked by
*priority* — tensors with at least one dimension, then zero-dim tensors, then
Python scalars — and by *category* — bool < integer < floating. A lower-priority
operand changes the result only when its category is higher; a Python float
then gives the default float dtype, so ``float32_tensor * 2.5`` stays float32.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "dtype", "float16", "bfloat16", "float32", "float64", "int8", "int16", "int32", "int64", "uint8",
    "bool", "half", "float", "double", "int", "long", "short",
    "get_default_dtype", "set_default_dtype", "result_type", "promote_types",
    "is_floating_point",
]

_BOOL, _INT, _FLOAT = 0, 1, 2


class dtype:
    """A tensor element type, mirroring ``torch.dtype``.

    Example:
        >>> import avila_ml as am
        >>> am.float32.itemsize, am.float32.is_floating_point
        (4, True)
    """

    __slots__ = ("name", "np", "category", "itemsize", "is_floating_point", "is_signed")

    def __init__(self, name: str, np_dtype, category: int):
        self.name = name
        self.np = np.dtype(np_dtype)
        self.category = category
        self.itemsize = self.np.itemsize
        self.is_floating_point = category == _FLOAT
        self.is_signed = self.np.kind != "u" and category != _BOOL

    def __repr__(self) -> str:
        return f"avila_ml.{self.name}"

    def __reduce__(self):
        return (_by_name, (self.name,))


float16 = dtype("float16", np.float16, _FLOAT)


class _MissingDtype:
    """Stands in for ``bfloat16`` when ``ml_dtypes`` is not installed: every use says how to get it."""

    __slots__ = ("name",)
    category = _FLOAT
    is_floating_point = True
    is_signed = True

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, attr):
        raise TypeError(
            f"{self.name} on the CPU needs the ml_dtypes package (NumPy has no {self.name}); "
            "install it with `pip install avila-ml[bf16]` or `pip install ml_dtypes`"
        )

    def __repr__(self) -> str:
        return f"avila_ml.{self.name}"

    def __reduce__(self):
        return (_by_name, (self.name,))


try:  # bfloat16 is not a NumPy dtype: ml_dtypes (JAX's) registers one NumPy understands
    import ml_dtypes as _ml_dtypes
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    bfloat16 = _MissingDtype("bfloat16")
else:
    bfloat16 = dtype("bfloat16", _ml_dtypes.bfloat16, _FLOAT)
float32 = dtype("float32", np.float32, _FLOAT)
float64 = dtype("float64", np.float64, _FLOAT)
int8 = dtype("int8", np.int8, _INT)
int16 = dtype("int16", np.int16, _INT)
int32 = dtype("int32", np.int32, _INT)
int64 = dtype("int64", np.int64, _INT)
uint8 = dtype("uint8", np.uint8, _INT)
bool = dtype("bool", np.bool_, _BOOL)  # noqa: A001 - PyTorch's public name
half, float, double = float16, float32, float64  # noqa: A001
int, long, short = int32, int64, int16  # noqa: A001

_ALL = ((float16,) + ((bfloat16,) if isinstance(bfloat16, dtype) else ()) + (float32, float64, int8, int16, int32, int64, uint8, bool))
_FROM_NP = {d.np: d for d in _ALL}
_NAMES = {d.name: d for d in _ALL}
_NAMES.setdefault("bfloat16", bfloat16)  # the stand-in, when ml_dtypes is missing, raises on use
_default_float = [float32]


BFLOAT16_CUDA_MSG = (
    "{op}: bfloat16 is supported on the CPU only (through ml_dtypes): CuPy has no bfloat16 "
    "dtype. On CUDA use float16 (e.g. autocast('cuda', dtype=avila_ml.float16) with a GradScaler)"
)


def np_is_floating(np_dtype) -> _pybool:
    """True for NumPy floating dtypes, ml_dtypes' bfloat16 included (its NumPy kind is 'V')."""
    return np_dtype.kind == "f" or np_dtype.name == "bfloat16"


def host_compute_dtype(array):
    """The dtype a NumPy GEMM/einsum on ``array`` runs in: float32 for the 2-byte floats
    (NumPy has no BLAS for float16 and no einsum for bfloat16; accumulating in float32 and
    rounding the result is what GPU tensor cores and PyTorch's CPU kernels do), else its own;
    None for CuPy arrays (cuBLAS handles float16 itself)."""
    d = array.dtype
    if d.itemsize == 2 and np_is_floating(d) and isinstance(array, np.ndarray):
        return np.dtype(np.float32)
    return None


def _by_name(name: str) -> dtype:
    return _NAMES[name]


def from_numpy_dtype(np_dtype) -> dtype:
    """Return the Avila ML dtype for a NumPy dtype, or raise ``TypeError`` naming it."""
    d = _FROM_NP.get(np.dtype(np_dtype))
    if d is None:
        raise TypeError(
            f"unsupported array dtype {np.dtype(np_dtype)}; supported: "
            + ", ".join(x.name for x in _ALL)
        )
    return d


def to_dtype(d) -> dtype:
    """Normalise ``d`` (an Avila ML dtype, NumPy dtype, type or name) to a :class:`dtype`."""
    if isinstance(d, dtype):
        return d
    if isinstance(d, str) and d in _NAMES:
        d = _NAMES[d]
        return d if isinstance(d, dtype) else d.np  # the stand-in raises, naming the fix
    if isinstance(d, _MissingDtype):
        return d.np
    if d is _pyfloat:
        return _default_float[0]
    if d is _pyint:
        return int64
    if d is _pybool:
        return bool
    return from_numpy_dtype(d)


_pyfloat = (1.0).__class__
_pyint = (1).__class__
_pybool = (True).__class__


def get_default_dtype() -> dtype:
    """Return the default floating dtype (``torch.get_default_dtype``).

    Example:
        >>> import avila_ml as am
        >>> am.get_default_dtype()
        avila_ml.float32
    """
    return _default_float[0]


def set_default_dtype(d) -> None:
    """Set the default floating dtype used by factories and Python floats (``torch.set_default_dtype``).

    Example:
        >>> import avila_ml as am
        >>> am.set_default_dtype(am.float64); am.tensor([1.0]).dtype
        avila_ml.float64
        >>> am.set_default_dtype(am.float32)
    """
    d = to_dtype(d)
    if not d.is_floating_point:
        raise TypeError(f"set_default_dtype: only floating dtypes can be the default, got {d}")
    _default_float[0] = d


def is_floating_point(d) -> _pybool:
    """True when ``d`` is a floating dtype.

    Example:
        >>> import avila_ml as am
        >>> am.dtypes.is_floating_point(am.float32), am.dtypes.is_floating_point(am.int64)
        (True, False)
    """
    return to_dtype(d).is_floating_point


def promote_types(a: dtype, b: dtype) -> dtype:
    """The smallest dtype both ``a`` and ``b`` convert to safely (``torch.promote_types``).

    Math: higher category wins (bool < int < float); within a category the wider type,
    with signed/unsigned mixing as in NumPy (``uint8`` + ``int8`` -> ``int16``).

    Example:
        >>> import avila_ml as am
        >>> am.promote_types(am.int64, am.float16), am.promote_types(am.int8, am.uint8)
        (avila_ml.float16, avila_ml.int16)
    """
    if a is b:
        return a
    if a.category != b.category:
        return a if a.category > b.category else b
    if a.itemsize == b.itemsize == 2 and a.category == _FLOAT:
        return float32  # float16 with bfloat16: neither holds the other (PyTorch gives float32)
    return _FROM_NP[np.promote_types(a.np, b.np)]


def _scalar_category(x) -> int:
    if isinstance(x, _pybool) or isinstance(x, np.bool_):
        return _BOOL
    if isinstance(x, (_pyint, np.integer)):
        return _INT
    return _FLOAT


def result_type(*operands) -> dtype:
    """The dtype of an elementwise op on ``operands`` (tensors or Python scalars), as ``torch.result_type``.

    Example:
        >>> import avila_ml as am
        >>> am.result_type(am.ones(3, dtype=am.int32), 2.5)
        avila_ml.float32
    """
    dim_t = zero_t = None
    scalar_cat = -1
    for x in operands:
        d = getattr(x, "dtype", None)
        if isinstance(d, dtype):
            if x.ndim > 0:
                dim_t = d if dim_t is None else promote_types(dim_t, d)
            else:
                zero_t = d if zero_t is None else promote_types(zero_t, d)
        else:
            c = _scalar_category(x)
            scalar_cat = c if c > scalar_cat else scalar_cat
    result = dim_t
    if zero_t is not None:
        if result is None or zero_t.category > result.category:
            result = zero_t
    if scalar_cat >= 0:
        if result is None or scalar_cat > result.category:
            result = (bool, int64, _default_float[0])[scalar_cat]
    return result
