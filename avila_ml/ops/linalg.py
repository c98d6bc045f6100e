"""Linear algebra: ``matmul`` (1-d, 2-d, batched with broadcasting), ``einsum``, ``outer``."""
from __future__ import annotations

import numpy as np

from ..autograd.function import Function
from ..autograd.grad_mode import _state
from ..backends import backend_of
from ..dtypes import host_compute_dtype
from ..amp.autocast_mode import autocast_op
from ..tensor import Tensor
from .elementwise import sum_to, _prepare, _arr
from .shape import reshape, squeeze, unsqueeze, broadcast_to

__all__ = ["matmul", "mm", "bmm", "dot", "outer", "einsum", "linear", "addmm", "baddbmm"]


_WEIGHT_LAYOUT_MIN = 1 << 15  # elements of a transposed 2-d operand whose gradient keeps its layout


class MatMul(Function):
    """Batched matrix product of two tensors with ndim >= 2 (batch dims broadcast)."""

    def forward(self, a, b):
        self.save_inputs(0, 1)
        ct = host_compute_dtype(a)
        if ct is not None:  # 2-byte floats on the CPU: float32 accumulation, rounded result
            return np.matmul(a.astype(ct), b.astype(ct)).astype(a.dtype)
        return backend_of(a).xp.matmul(a, b)

    def backward(self, g):
        a, b = self.saved_inputs
        na, nb = self.needs_input_grad
        ga = sum_to(MatMul.apply(g, b.mT), a.shape) if na else None
        gb = None
        if nb:
            ba = b.array
            if (a.ndim == 2 and ba.ndim == 2 and ba.size >= _WEIGHT_LAYOUT_MIN and ba.flags.f_contiguous
                    and not ba.flags.c_contiguous):
                # b is a transposed view (a Linear's W.mT): dB = (dC^T A)^T, computed in W's own
                # layout, so the gradient that reaches W is C-ordered and its leaf takes it
                # without a copy. In-process A/B, one thread, loaded machine: VAE step 12.2 ->
                # 11.6 ms; below _WEIGHT_LAYOUT_MIN the two extra transposes cost more than the
                # copy (digits MLP 1.24 -> 1.27 ms)
                gb = MatMul.apply(g.mT, a).mT
            else:
                gb = sum_to(MatMul.apply(a.mT, g), b.shape)
        return ga, gb


class Linear(Function):
    """``x W^T + b`` over the last dim of ``x`` as ONE node (``torch.nn.functional.linear``'s
    addmm): ``x`` (..., in) is read as (rows, in) (a view when its rows are contiguous), the
    product is one GEMM (oneDNN's, with the bias inside its kernel, for large float32 products:
    :func:`_onednn_gemm`; else NumPy's, the bias added in place into its fresh output).

    The composed path records Permute (``W.mT``), Reshape, MatMul, Reshape and Add nodes for a
    3-d input (three for a 2-d one), and its backward passes the gradient through all of them;
    here the backward is three array expressions: dx = g W, dW = g^T x (C-ordered, so the
    weight's leaf takes it without a copy), db = sum of g over the rows. Under
    ``create_graph`` the same formulas run as Tensor ops (double backward). Used by
    :func:`linear` for real floating host/device arrays of one dtype, outside autocast; values
    are bitwise those of the composed path's forward, except where a large float32 product
    runs on oneDNN's GEMM (:func:`_onednn_gemm`: equal to float32 rounding), forward and
    backward alike.

    Math: y = x W^T + b; dx = g W, dW = g^T x, db = sum_rows g (rows: every dim of x but the last).

    Example:
        >>> import avila_ml as am
        >>> x = am.ones(2, 3, 4, requires_grad=True)
        >>> w, b = am.ones(5, 4, requires_grad=True), am.zeros(5, requires_grad=True)
        >>> y = am.nn.functional.linear(x, w, b); y.grad_fn.name(), y.shape
        ('AddmmBackward0', (2, 3, 5))
        >>> y.sum().backward(); w.grad[0], b.grad
        (tensor([6., 6., 6., 6.]), tensor([6., 6., 6., 6., 6.]))
    """

    def forward(self, x, w, b):
        self.save_inputs(0, 1)
        k, n = x.shape[-1], w.shape[0]
        rows = 1
        for d in x.shape[:-1]:
            rows *= d
        self.rows = rows
        x2 = x.reshape(rows, k)
        out = _onednn_gemm(x2, w, trans_b=True, bias=b)
        if out is None:
            out = backend_of(x).xp.matmul(x2, w.T)
            if b is not None:
                out += b  # into the product's own fresh buffer: no second allocation
        return out.reshape(x.shape[:-1] + (n,))

    def _name(self) -> str:  # PyTorch's node for a 2-d input
        return "AddmmBackward0" if len(self.needs_input_grad) > 2 else "MmBackward0"

    def backward(self, g):
        x, w = self.saved_inputs
        needs = self.needs_input_grad
        need_x, need_w = needs[0], needs[1]
        need_b = len(needs) > 2 and needs[2]
        rows, k, n = self.rows, w.shape[1], w.shape[0]
        if _state.enabled:  # create_graph: the same formulas, differentiable
            g2 = reshape(g, (rows, n))
            gx = reshape(matmul(g2, w), x.shape) if need_x else None
            gw = matmul(g2.mT, reshape(x, (rows, k))) if need_w else None
            gb = g2.sum(0) if need_b else None
        else:
            ga = g.array
            xp = backend_of(ga).xp
            g2 = ga.reshape(rows, n)
            gx = gw = gb = None
            if need_x:
                gx = _onednn_gemm(g2, w.array)
                gx = Tensor._wrap((xp.matmul(g2, w.array) if gx is None else gx).reshape(x.shape))
            if need_w:
                x2 = x.array.reshape(rows, k)
                gw = _onednn_gemm(g2, x2, trans_a=True)
                gw = Tensor._wrap(xp.matmul(g2.T, x2) if gw is None else gw)
            if need_b:
                gb = Tensor._wrap(_column_sums(g2, xp))
        return (gx, gw, gb) if len(needs) > 2 else (gx, gw)


# products of at least this many multiply-adds (rows x in x out features) run on oneDNN's matmul.
# Quiet 2-core AVX-512 EPYC, 2 threads, float32, OpenBLAS / oneDNN us (forward, dx, dW):
# (64, 64) x 128 out: 22/20, 10/16, 10/19; (64, 128) x 128: 41/31, 36/23, 49/25; (128, 784) x 400:
# 574/471, 521/366, 641/378; (2048, 512) x 128: 1364/1214, 1319/1226, 1424/1362; (700, 200) x 10000:
# 16.5/14.8, 15.5/14.5, 15.4/14.8 ms. In a program, a step that mixes the two libraries pays for it:
# each oneDNN call stops OpenBLAS's spinning workers and the next OpenBLAS product restarts them.
# Program steps (bench_programs.py's, in-process alternations, medians of 10) with this bound at
# 2^16 / 2^19 / 2^20 / 2^22: digits MLP (64 rows; 0.5M, 1M and 82k multiply-adds) 0.659 / 0.626 /
# 0.808 / 0.557 ms, MNIST VAE (128 rows; 40M and 1M) 4.86 / 4.78 / 5.80 / 5.74 ms; word LM at 2^19
# / 2^22 / 2^28 73.2 / 72.2 / 72.2 ms, MNIST CNN 32.9 / 33.5 / 34.1 ms.
_ONEDNN_GEMM_MIN = 1 << 19


def _onednn_gemm(a, b, trans_a=False, trans_b=False, bias=None):
    """``op(a) @ op(b) (+ bias)`` of two 2-d float32 NumPy arrays by oneDNN's matmul (``op``:
    the transpose where asked), as a new C-order array, or None where that path does not apply:
    oneDNN off or absent, not float32 NumPy, an operand neither C- nor F-contiguous, or fewer
    than ``_ONEDNN_GEMM_MIN`` multiply-adds (below, oneDNN's fixed cost of ~16-20 us of Python
    and ctypes a call exceeds what its kernel saves). The caller then uses NumPy's product.

    Why: the linear layers' forward and backward products are most of a transformer's step, and
    oneDNN's GEMM ran them 5-20% faster than NumPy's OpenBLAS here (table above); it also adds
    the bias inside its kernel (as PyTorch's addmm folds it into the GEMM), where NumPy's
    ``out += b`` is one more single-threaded pass over the output. Every product of a step on
    oneDNN also keeps OpenBLAS's worker threads down: they were stopped before each oneDNN call
    and restarted by the next OpenBLAS product, 23 times a step of the small GPT of
    bench_programs.py; in that step the linear layers' time went from 22.7 + 45.2 to 20.3 + 39.9
    ms (forward + backward, medians of 8 alternations in one process).

    Math: ``out = A B (+ 1 bias^T)``, ``A = a`` or ``a^T``, ``B = b`` or ``b^T``, in float32.
    PyTorch: ``torch.addmm`` / ``torch.mm`` (which reach oneDNN's or MKL's GEMM the same way)."""
    if (type(a) is not np.ndarray or type(b) is not np.ndarray or a.dtype != np.float32 or b.dtype != np.float32
            or a.ndim != 2 or b.ndim != 2):
        return None
    mkldnn, lib, matmul = _ACCEL or _accel_modules()
    if lib is None or not mkldnn.enabled:
        return None
    m, k = (a.shape[1], a.shape[0]) if trans_a else a.shape
    n = b.shape[0] if trans_b else b.shape[1]
    if m * k * n < _ONEDNN_GEMM_MIN or not ((a.flags.c_contiguous or a.flags.f_contiguous)
                                           and (b.flags.c_contiguous or b.flags.f_contiguous)):
        return None
    if bias is not None and (type(bias) is not np.ndarray or bias.dtype != np.float32 or bias.shape != (n,)
                             or not bias.flags.c_contiguous):
        return None
    out = np.empty((m, n), dtype=np.float32)
    if not matmul(a[None], b[None], out[None], trans_a=trans_a, trans_b=trans_b, bias=bias):
        return None
    return out


def _column_sums(g2, xp):
    """``g2.sum(axis=0)`` of a (rows, n) gradient: the compiled kernel's threaded two-level sum
    (:func:`avila_ml.cpu_accel._native.column_sums`) for C-contiguous float32/float64 NumPy
    arrays where the products run on oneDNN (:func:`_products_on_onednn`), else the product
    ``1^T g2`` (one BLAS call, threaded, where NumPy's reduction is single-threaded: (2048, 384)
    float32 48 us vs 101 us on a loaded 2-core EPYC). The kernel matched OpenBLAS's product
    ((2048, 384) float32: 27-37 vs 28-35 us) without waking OpenBLAS's worker threads. The summation order differs from ``sum(axis=0)``, so the result may differ
    in the last bits (tests compare it with PyTorch in float64)."""
    if g2.shape[0] < 64 or not g2.flags.c_contiguous:
        return g2.sum(axis=0)
    if type(g2) is np.ndarray and _products_on_onednn():
        from ..cpu_accel import _native
        out = np.empty(g2.shape[1], dtype=g2.dtype)
        if _native.column_sums(g2, out):
            return out
    return xp.matmul(xp.ones(g2.shape[0], dtype=g2.dtype), g2)


def _products_on_onednn() -> bool:
    """Whether the large float32 products run on oneDNN (installed, loaded, not switched off).
    Without it they run on OpenBLAS, and the column sums stay there too: the compiled kernel's
    OpenMP team would stop OpenBLAS's workers, which the next product restarts (one GRU layer
    200->200, T = 35, N = 20, fwd+bwd without oneDNN: 25.48 ms with OpenBLAS's sums, 26.13 with
    the kernel's, in-process A/B, medians of 10)."""
    mkldnn, lib, _ = _ACCEL or _accel_modules()
    return lib is not None and mkldnn.enabled


_ACCEL = None  # (backends.mkldnn, the loaded oneDNN library or None, cpu_accel._matmul.matmul)


def _accel_modules():
    """What :func:`_onednn_gemm` consults, imported (and oneDNN loaded, once per process, as
    ``_dnnl.load`` does) on first use and kept: import statements in every call cost ~5 us, and
    a recurrent layer's step loop makes hundreds of calls (one GRU layer 200->200, T = 35,
    without oneDNN: 1.06x slower than before with them)."""
    global _ACCEL
    from ..backends import mkldnn
    from ..cpu_accel import _dnnl
    from ..cpu_accel._matmul import matmul
    _ACCEL = (mkldnn, _dnnl.load(), matmul)
    return _ACCEL


def _one_linear_node(input, weight, bias) -> bool:
    """Whether :func:`linear` can run as one :class:`Linear` node: one real floating dtype that
    the backend multiplies natively (not a 2-byte float on the CPU), one array type, a 2-d
    weight and a (out,) bias, and no autocast region (its casts follow the composed ops)."""
    x, w = input.array, weight.array
    if (w.ndim != 2 or x.ndim == 0 or x.dtype != w.dtype or x.dtype.kind != "f" or type(x) is not type(w)
            or _state.autocast is not None or host_compute_dtype(x) is not None):
        return False
    if bias is None:
        return True
    b = bias.array if isinstance(bias, Tensor) else None
    return b is not None and b.dtype == x.dtype and type(b) is type(x) and b.shape == (w.shape[0],)


def matmul(input, other):
    """Matrix product with NumPy/PyTorch semantics (``torch.matmul``, the ``@`` operator).

    1-d operands are promoted to a row (left) or column (right) and the added dim removed
    afterwards; batch dims broadcast.

    Math: C = A B; dA = dC B^T, dB = A^T dC (summed over broadcast batch dims).

    Example:
        >>> import avila_ml as am
        >>> am.matmul(am.ones(2, 3), am.ones(3))
        tensor([3., 3.])
    """
    a, b = _prepare(input, other, "matmul")
    if a.ndim == 0 or b.ndim == 0:
        raise RuntimeError(f"matmul: both arguments need at least 1 dimension, got shapes {tuple(a.shape)} and {tuple(b.shape)}")
    ka = a.shape[-1]
    kb = b.shape[-2] if b.ndim >= 2 else b.shape[0]
    if ka != kb:
        raise RuntimeError(
            f"matmul: shapes {tuple(a.shape)} and {tuple(b.shape)} cannot be multiplied "
            f"({ka} != {kb} in the contracted dimension)"
        )
    if a.ndim > 2 and b.ndim > 2:
        try:
            np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        except ValueError:
            raise RuntimeError(f"matmul: batch dims of {tuple(a.shape)} and {tuple(b.shape)} do not broadcast") from None
    if a.ndim > 2 and b.ndim == 2:
        # (..., n, k) @ (k, m) as one (N n, k) @ (k, m) product: one BLAS call instead of one
        # per batch entry (NumPy's stacked matmul), and dB is then one product as well
        rows = int(np.prod(a.shape[:-1], dtype=np.int64))
        out = MatMul.apply(reshape(a, (rows, ka)), b)
        return reshape(out, tuple(a.shape[:-1]) + (b.shape[-1],))
    a1, b1 = a.ndim == 1, b.ndim == 1
    if a1:
        a = unsqueeze(a, 0)
    if b1:
        b = unsqueeze(b, -1)
    out = MatMul.apply(a, b)
    if a1 and b1:
        return reshape(out, out.shape[:-2])
    if a1:
        return squeeze(out, -2)
    if b1:
        return squeeze(out, -1)
    return out


def mm(input, mat2):
    """2-d matrix product (``torch.mm``).

    Example:
        >>> import avila_ml as am
        >>> am.mm(am.tensor([[1.0, 2.0]]), am.tensor([[3.0], [4.0]]))
        tensor([[11.]])
    """
    if input.ndim != 2 or mat2.ndim != 2:
        raise RuntimeError(f"mm: expected 2-d tensors, got shapes {tuple(input.shape)} and {tuple(mat2.shape)}")
    return matmul(input, mat2)


def bmm(input, mat2):
    """Batched product of 3-d tensors with equal batch size (``torch.bmm``).

    Example:
        >>> import avila_ml as am
        >>> am.bmm(am.ones(2, 1, 3), am.ones(2, 3, 4)).shape
        (2, 1, 4)
    """
    if input.ndim != 3 or mat2.ndim != 3 or input.shape[0] != mat2.shape[0]:
        raise RuntimeError(f"bmm: expected 3-d tensors with equal batch size, got {tuple(input.shape)} and {tuple(mat2.shape)}")
    return matmul(input, mat2)


def dot(input, other):
    """Inner product of two 1-d tensors (``torch.dot``).

    Example:
        >>> import avila_ml as am
        >>> am.dot(am.tensor([1.0, 2.0]), am.tensor([3.0, 4.0]))
        tensor(11.)
    """
    if input.ndim != 1 or other.ndim != 1 or input.shape != other.shape:
        raise RuntimeError(f"dot: expected two 1-d tensors of equal size, got {tuple(input.shape)} and {tuple(other.shape)}")
    return matmul(input, other)


def outer(input, vec2):
    """Outer product ``a_i b_j`` of two 1-d tensors (``torch.outer``).

    Example:
        >>> import avila_ml as am
        >>> am.outer(am.tensor([1.0, 2.0]), am.tensor([3.0, 4.0]))
        tensor([[3., 4.],
                [6., 8.]])
    """
    if input.ndim != 1 or vec2.ndim != 1:
        raise RuntimeError(f"outer: expected 1-d tensors, got {tuple(input.shape)} and {tuple(vec2.shape)}")
    return unsqueeze(input, 1) * unsqueeze(vec2, 0)


@autocast_op("linear")
def linear(input, weight, bias=None):
    """``input @ weight.T + bias`` (``torch.nn.functional.linear``).

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.linear(am.ones(2, 3), am.ones(4, 3)).shape
        (2, 4)
    """
    if input.shape[-1:] != weight.shape[-1:]:
        raise RuntimeError(
            f"linear: input of shape {tuple(input.shape)} has {input.shape[-1] if input.ndim else 0} features "
            f"but weight of shape {tuple(weight.shape)} expects {weight.shape[-1]}"
        )
    if _one_linear_node(input, weight, bias):
        return Linear.apply(input, weight, bias)
    out = matmul(input, weight.mT if weight.ndim == 2 else weight)
    return out if bias is None else out + bias


def _scaled_sum(input, product, beta, alpha):
    """``beta * input + alpha * product``; beta = 0 ignores ``input`` (even NaN), as PyTorch."""
    if product.array.dtype.kind in "iu":
        # integer tensors keep their dtype: PyTorch converts alpha/beta to it (truncating 1.5 to 1)
        alpha, beta = int(alpha), int(beta)
    out = product if alpha == 1 else product * alpha
    if beta == 0:
        if isinstance(input, Tensor) and input.requires_grad:
            # PyTorch still gives ``input`` a (zero) gradient: add zeros selected by an all-false
            # mask, whose backward is zero even where ``input`` is NaN/inf
            from .elementwise import where
            mask = Tensor._wrap(backend_of(input.array).xp.zeros(input.shape, dtype=bool))
            return out + where(mask, input, 0)
        return out
    return out + (input if beta == 1 else input * beta)


@autocast_op("addmm")
def addmm(input, mat1, mat2, *, beta=1, alpha=1):
    """``beta * input + alpha * (mat1 @ mat2)`` for 2-d ``mat1``, ``mat2`` (``torch.addmm``).

    Example:
        >>> import avila_ml as am
        >>> am.addmm(am.ones(2), am.ones(2, 3), am.ones(3, 2), beta=0.5)
        tensor([[3.5000, 3.5000],
                [3.5000, 3.5000]])
    """
    if mat1.ndim != 2 or mat2.ndim != 2:
        raise RuntimeError(f"addmm: expected 2-d mat1 and mat2, got shapes {tuple(mat1.shape)} and {tuple(mat2.shape)}")
    return _scaled_sum(input, mm(mat1, mat2), beta, alpha)


@autocast_op("baddbmm")
def baddbmm(input, batch1, batch2, *, beta=1, alpha=1):
    """``beta * input + alpha * (batch1 @ batch2)`` for 3-d batches (``torch.baddbmm``).

    Example:
        >>> import avila_ml as am
        >>> am.baddbmm(am.zeros(2, 1, 1), am.ones(2, 1, 3), am.ones(2, 3, 1), alpha=2).flatten()
        tensor([6., 6.])
    """
    return _scaled_sum(input, bmm(batch1, batch2), beta, alpha)


class Einsum(Function):
    def forward(self, spec, *ops):
        self.spec = spec
        self.save_inputs(*range(len(ops)))
        ct = host_compute_dtype(ops[0])
        if ct is not None:  # 2-byte floats on the CPU: float32 accumulation, rounded result
            return _arr(np.einsum(spec, *[o.astype(ct) for o in ops], optimize=len(ops) > 2).astype(ops[0].dtype))
        return _arr(backend_of(ops[0]).xp.einsum(spec, *ops, optimize=len(ops) > 2))

    def backward(self, g):
        ins, out = self.spec.split("->")
        subs = ins.split(",")
        xs = self.saved_inputs
        grads = []
        for i, (sub, need) in enumerate(zip(subs, self.needs_input_grad)):
            if not need:
                grads.append(None)
                continue
            others = [s for j, s in enumerate(subs) if j != i]
            other_ts = [t for j, t in enumerate(xs) if j != i]
            uniq = "".join(dict.fromkeys(sub))
            have = set(out).union(*others) if others else set(out)
            kept = "".join(c for c in uniq if c in have)
            r = einsum(",".join([out] + others) + "->" + kept, g, *other_ts)
            if kept != uniq:
                # letters summed away only in this operand: their gradient is broadcast
                full = [xs[i].shape[sub.index(c)] for c in uniq]
                shape_kept = [1 if c not in kept else full[k] for k, c in enumerate(uniq)]
                # ``kept`` lists its letters in ``uniq`` order, so a reshape inserts the size-1 axes
                r = broadcast_to(reshape(r, tuple(shape_kept)), tuple(full))
            if uniq != sub:
                r = _expand_diagonal(r, uniq, sub, xs[i])
            grads.append(r)
        return tuple(grads)


def _expand_diagonal(r, uniq: str, sub: str, x: Tensor):
    """Gradient for an operand with a repeated letter (e.g. 'ii'): place it on the diagonal.

    ``r`` has one axis per unique letter, in order of first appearance in ``sub``; those
    axes go to the first-appearance positions, the repeats get size 1, and a 0/1 mask keeps
    only the diagonal after broadcasting.
    """
    xp = backend_of(x.array).xp
    mask = xp.ones(x.shape, dtype=x.array.dtype)
    base = [1] * len(sub)
    for c in uniq:
        pos = [k for k, s in enumerate(sub) if s == c]
        base[pos[0]] = x.shape[pos[0]]
        for p in pos[1:]:
            eye_shape = [1] * len(sub)
            eye_shape[pos[0]] = eye_shape[p] = x.shape[p]
            mask = mask * xp.eye(x.shape[p], dtype=x.array.dtype).reshape(eye_shape)
    placed = broadcast_to(reshape(r, tuple(base)), tuple(x.shape))
    return placed * Tensor._wrap(mask)


def einsum(equation: str, *operands):
    """Einstein summation (``torch.einsum``); ``->`` may be omitted (implicit output).

    Math: the gradient for an operand is the einsum of the output gradient with the other
    operands, back to that operand's subscripts.

    Example:
        >>> import avila_ml as am
        >>> am.einsum("ij,jk->ik", am.ones(2, 3), am.ones(3, 4)).shape
        (2, 4)
    """
    if len(operands) == 1 and isinstance(operands[0], (list, tuple)):
        operands = tuple(operands[0])
    eq = equation.replace(" ", "")
    if "..." in eq:
        raise ValueError(f"einsum: ellipsis is not supported in {equation!r}; write the dims out")
    if "->" not in eq:
        ins = eq
        letters = "".join(eq.split(","))
        out = "".join(sorted(c for c in set(letters) if letters.count(c) == 1))
        eq = f"{ins}->{out}"
    subs = eq.split("->")[0].split(",")
    if len(subs) != len(operands):
        raise RuntimeError(f"einsum: {equation!r} names {len(subs)} operands but {len(operands)} were given")
    for k, (s, t) in enumerate(zip(subs, operands)):
        if len(s) != t.ndim:
            raise RuntimeError(f"einsum: subscript {s!r} has {len(s)} letters but operand {k} has shape {tuple(t.shape)}")
    sizes = {}
    for k, (s, t) in enumerate(zip(subs, operands)):
        for c, n in zip(s, t.shape):
            if sizes.setdefault(c, n) != n:
                raise RuntimeError(f"einsum: letter {c!r} has size {sizes[c]} in one operand and {n} in operand {k} ({equation!r})")
    from .. import dtypes as _dt
    dt = _dt.result_type(*operands)
    if dt is _dt.bool and len(operands) == 1 and set(subs[0]) - set(eq.split("->")[1]):
        dt = _dt.int64  # a summed letter: PyTorch sums the bool operand, which counts in int64
    ops = [t if t.dtype is dt else t.to(dt) for t in operands]
    return Einsum.apply(eq, *ops)
