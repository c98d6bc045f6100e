"""``avila_ml.testing.assert_close``: compare tensors (and numbers, arrays, nested sequences and
mappings of them) with dtype-aware tolerances (``torch.testing.assert_close``)."""
from __future__ import annotations

import collections.abc
import math

import numpy as np

from .tensor import Tensor

__all__ = ["assert_close"]

# PyTorch's default (rtol, atol) per dtype; exact for integers and bool
_DEFAULT_TOL = {np.dtype(np.float16): (1e-3, 1e-5), np.dtype(np.float32): (1.3e-6, 1e-5),
                np.dtype(np.float64): (1e-7, 1e-7)}


def _tol(dtype) -> tuple:
    return _DEFAULT_TOL.get(np.dtype(dtype), (0.0, 0.0))


def _fail(msg, generated: str, where: str):
    text = generated + (f"\n\nThe failure occurred for item {where}" if where else "")
    if callable(msg):
        text = msg(text)
    elif msg is not None:
        text = msg
    raise AssertionError(text)


def _as_array(x):
    if isinstance(x, Tensor):
        return x.detach().cpu().array
    return np.asarray(x)


def _describe(x) -> str:
    if isinstance(x, Tensor):
        return f"{x.dtype} on {x.device}"
    return str(np.asarray(x).dtype)


def _compare_tensors(actual, expected, rtol, atol, equal_nan, check_device, check_dtype, msg, where):
    ta, te = isinstance(actual, Tensor), isinstance(expected, Tensor)
    a, e = _as_array(actual), _as_array(expected)
    if a.shape != e.shape:
        _fail(msg, f"The values for attribute 'shape' do not match: {tuple(a.shape)} != {tuple(e.shape)}.", where)
    if check_device and ta and te and actual.device != expected.device:
        _fail(msg, f"The values for attribute 'device' do not match: {actual.device} != {expected.device}.", where)
    if check_dtype and a.dtype != e.dtype:
        da = actual.dtype if ta else a.dtype
        de = expected.dtype if te else e.dtype
        _fail(msg, f"The values for attribute 'dtype' do not match: {da} != {de}.", where)
    common = np.result_type(a.dtype, e.dtype)
    if rtol is None:
        rtol = max(_tol(a.dtype)[0], _tol(e.dtype)[0])
        atol = max(_tol(a.dtype)[1], _tol(e.dtype)[1])
    a, e = a.astype(common, copy=False), e.astype(common, copy=False)
    if common.kind == "b" or (rtol == 0 and atol == 0 and common.kind in "iu"):
        close = a == e
        diff = np.abs(a.astype(np.float64) - e.astype(np.float64)) if common.kind != "b" else (a != e).astype(np.float64)
    else:
        a64, e64 = a.astype(np.float64), e.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(a64 - e64)
            close = (a64 == e64) | (np.isfinite(a64) & np.isfinite(e64) & (diff <= atol + rtol * np.abs(e64)))
        if equal_nan:
            close |= np.isnan(a64) & np.isnan(e64)
    if close.all():
        return
    bad = ~close
    n_bad, total = int(bad.sum()), close.size
    exact = rtol == 0 and atol == 0
    kind = "Scalars" if a.ndim == 0 else "Tensor-likes"
    lines = [f"{kind} are not {'equal' if exact else 'close'}!", ""]
    # differences as PyTorch reports them: in the compared float dtype; for integers the
    # absolute difference is an integer and the relative one a float32 (float64 for scalars)
    if common.kind == "f":
        work = common if a.ndim else np.dtype(np.float64)
        rel_work = work
    else:
        work = np.dtype(np.int64) if common.kind in "iu" else np.dtype(np.float64)
        rel_work = np.dtype(np.float32) if a.ndim else np.dtype(np.float64)
    aw, ew = a.astype(work), e.astype(work)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        diff_w = np.abs(aw - ew) if work.kind == "f" else np.abs(aw.astype(np.int64) - ew.astype(np.int64))
        absd = np.where(bad, np.nan_to_num(diff_w, nan=np.inf) if work.kind == "f" else diff_w, -1).astype(work)
        reld = np.where(bad, np.nan_to_num(diff_w.astype(rel_work) / np.abs(ew.astype(rel_work)), nan=np.inf),
                        -1.0).astype(rel_work)
    up_a = "" if exact else f" (up to {atol} allowed)"
    up_r = "" if exact else f" (up to {rtol} allowed)"
    if a.ndim == 0:
        lines.append(f"Expected {e.item()} but got {a.item()}.")
        lines.append(f"Absolute difference: {absd.item()}{up_a}")
        lines.append(f"Relative difference: {reld.item()}{up_r}")
    else:
        ia = np.unravel_index(int(np.argmax(absd)), a.shape)
        ir = np.unravel_index(int(np.argmax(reld)), a.shape)
        lines.append(f"Mismatched elements: {n_bad} / {total} ({100.0 * n_bad / total:.1f}%)")
        lines.append(f"Greatest absolute difference: {absd[ia].item()} at index {tuple(int(i) for i in ia)}{up_a}")
        lines.append(f"Greatest relative difference: {reld[ir].item()} at index {tuple(int(i) for i in ir)}{up_r}")
    _fail(msg, "\n".join(lines), where)


def _is_leaf(x) -> bool:
    return isinstance(x, (Tensor, np.ndarray, np.generic, int, float, complex, bool))


def _walk(actual, expected, where, kw):
    if _is_leaf(actual) and _is_leaf(expected):
        if not (isinstance(actual, Tensor) or isinstance(expected, Tensor)) and kw["check_dtype"]:
            # Python numbers: their types must match as PyTorch checks (int vs float)
            if type(actual) is not type(expected) and not isinstance(actual, (np.ndarray, np.generic)):
                _fail(kw["msg"], f"The values for attribute 'type' do not match: {type(actual).__name__} != "
                      f"{type(expected).__name__}.", where)
        if isinstance(expected, Tensor) != isinstance(actual, Tensor) and kw["check_dtype"]:
            a_t = type(actual).__name__
            e_t = type(expected).__name__
            raise TypeError(f"assert_close: no comparison pair for {a_t} and {e_t}: both inputs must be "
                            "tensors (or pass check_dtype=False to compare a tensor with a number/array)")
        _compare_tensors(actual, expected, kw["rtol"], kw["atol"], kw["equal_nan"], kw["check_device"],
                         kw["check_dtype"], kw["msg"], where)
        return
    if isinstance(actual, collections.abc.Mapping) and isinstance(expected, collections.abc.Mapping):
        if set(actual) != set(expected):
            _fail(kw["msg"], f"The keys of the mappings do not match: {sorted(map(str, actual))} != "
                  f"{sorted(map(str, expected))}.", where)
        for k in expected:
            _walk(actual[k], expected[k], f"{where}[{k!r}]", kw)
        return
    seq = (list, tuple)
    if isinstance(actual, seq) and isinstance(expected, seq):
        if len(actual) != len(expected):
            _fail(kw["msg"], f"The length of the sequences mismatch: {len(actual)} != {len(expected)}", where)
        for i, (x, y) in enumerate(zip(actual, expected)):
            _walk(x, y, f"{where}[{i}]", kw)
        return
    if actual is None and expected is None:
        return
    raise TypeError(f"assert_close: cannot compare {type(actual).__name__} with {type(expected).__name__}"
                    + (f" at {where}" if where else ""))


def assert_close(actual, expected, *, allow_subclasses: bool = True, rtol=None, atol=None,
                 equal_nan: bool = False, check_device: bool = True, check_dtype: bool = True,
                 check_layout: bool = True, check_stride: bool = False, msg=None) -> None:
    """Raise ``AssertionError`` unless ``actual`` and ``expected`` are close
    (``torch.testing.assert_close``).

    Math: element-wise ``|actual - expected| <= atol + rtol * |expected|`` (infinities must
    be equal; NaN equals NaN only with ``equal_nan``). Default ``(rtol, atol)`` by dtype, as
    in PyTorch: float16 ``(1e-3, 1e-5)``, float32 ``(1.3e-6, 1e-5)``, float64 ``(1e-7, 1e-7)``,
    integers and bool exact. Give both ``rtol`` and ``atol`` or neither. Shapes must match;
    with ``check_dtype`` (default) dtypes too, else both are promoted; with ``check_device``
    devices too. Sequences and mappings are compared item by item. The message counts the
    mismatched elements and names the greatest absolute and relative differences and where
    they are; ``msg`` (a string, or a callable given the generated message) replaces it.
    ``check_layout`` and ``check_stride`` are accepted for PyTorch compatibility (there is one
    layout; strides are not compared).

    Example:
        >>> import avila_ml as am
        >>> am.testing.assert_close(am.tensor([1.0, 2.0]), am.tensor([1.0, 2.0 + 1e-7]))
        >>> try:
        ...     am.testing.assert_close(am.tensor([1.0, 2.0, 3.0]), am.tensor([1.0, 2.5, 3.0]))
        ... except AssertionError as e:
        ...     print(e)
        Tensor-likes are not close!
        <BLANKLINE>
        Mismatched elements: 1 / 3 (33.3%)
        Greatest absolute difference: 0.5 at index (1,) (up to 1e-05 allowed)
        Greatest relative difference: 0.20000000298023224 at index (1,) (up to 1.3e-06 allowed)
    """
    if (rtol is None) != (atol is None):
        raise ValueError(f"assert_close: both 'rtol' and 'atol' must be either specified or omitted, but got "
                         f"no {'rtol' if rtol is None else 'atol'}.")
    if rtol is not None and (rtol < 0 or atol < 0 or math.isnan(rtol) or math.isnan(atol)):
        raise ValueError(f"assert_close: rtol and atol must be non-negative numbers, got {rtol}, {atol}")
    kw = dict(rtol=rtol, atol=atol, equal_nan=equal_nan, check_device=check_device, check_dtype=check_dtype,
              msg=msg)
    _walk(actual, expected, "", kw)
