"""Finite-difference checks of analytical gradients: ``gradcheck`` and ``gradgradcheck``.

Central differences in float64: J_num[:, j] = (f(x + eps e_j) - f(x - eps e_j)) / (2 eps),
compared with the analytical Jacobian built row by row from vector-Jacobian products.
The report gives, for each input, the worst absolute and relative error.
"""
from __future__ import annotations

import warnings

import numpy as np

__all__ = ["gradcheck", "gradgradcheck", "GradcheckError", "jacobian_errors"]


class GradcheckError(RuntimeError):
    """Raised when analytical and numerical Jacobians disagree (``torch.autograd.gradcheck``'s error).

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.autograd import Function
        >>> class BadSquare(Function):
        ...     def forward(self, x):
        ...         self.save_inputs(0)
        ...         return x * x
        ...     def backward(self, g):
        ...         (x,) = self.saved_inputs
        ...         return 3 * x * g
        ...
        >>> x = am.tensor([1.0, 2.0], dtype=am.float64, requires_grad=True)
        >>> from avila_ml.autograd.gradcheck import GradcheckError
        >>> try:
        ...     am.autograd.gradcheck(BadSquare.apply, (x,))
        ... except GradcheckError:
        ...     print('caught')
        ...
        caught
    """


def _tuple(x):
    return tuple(x) if isinstance(x, (tuple, list)) else (x,)


def _outputs(func, inputs):
    from ..tensor import Tensor
    outs = _tuple(func(*inputs))
    return tuple(o for o in outs if isinstance(o, Tensor) and o.dtype.is_floating_point)


def _numerical(func, inputs, diff_idx, eps):
    """Numerical Jacobian blocks: jac[i][k] has shape (out_k.size, in_i.size)."""
    # evaluated with grad mode as the caller has it: for gradgradcheck, func itself calls grad()
    base = _outputs(func, inputs)
    jac = []
    for i in diff_idx:
        x = inputs[i].array
        blocks = [np.zeros((o.array.size, x.size)) for o in base]
        for j in range(x.size):
            idx = np.unravel_index(j, x.shape)
            orig = x[idx].item()
            x[idx] = orig + eps
            plus = [o._backend.to_numpy(o.array).astype(np.float64).ravel() for o in _outputs(func, inputs)]
            x[idx] = orig - eps
            minus = [o._backend.to_numpy(o.array).astype(np.float64).ravel() for o in _outputs(func, inputs)]
            x[idx] = orig
            for k, (p, m) in enumerate(zip(plus, minus)):
                blocks[k][:, j] = (p - m) / (2 * eps)
        jac.append(blocks)
    return jac


def _analytical(func, inputs, diff_idx):
    from . import grad
    from ..tensor import Tensor
    outs = _outputs(func, inputs)
    jac = [[np.zeros((o.array.size, inputs[i].array.size)) for o in outs] for i in diff_idx]
    diff_inputs = [inputs[i] for i in diff_idx]
    for k, o in enumerate(outs):
        if not o.requires_grad:
            continue
        xp = o._backend.xp
        for r in range(o.array.size):
            onehot = xp.zeros(o.shape, dtype=o.array.dtype)
            onehot[np.unravel_index(r, o.shape)] = 1
            gs = grad(o, diff_inputs, Tensor._wrap(onehot), retain_graph=True, allow_unused=True)
            for n, g in enumerate(gs):
                if g is not None:
                    jac[n][k][r, :] = g._backend.to_numpy(g.array).astype(np.float64).ravel()
    return jac


def jacobian_errors(func, inputs, eps: float = 1e-6):
    """For each differentiable input: (its index, worst absolute error, worst relative error,
    analytical Jacobian, numerical Jacobian), both Jacobians flattened.

    Example:
        >>> import avila_ml as am
        >>> from avila_ml.autograd.gradcheck import jacobian_errors
        >>> x = am.tensor([1.0, 2.0], dtype=am.float64, requires_grad=True)
        >>> index, abs_err, rel_err, analytical, numerical = jacobian_errors(lambda t: t * t, (x,))[0]
        >>> index, bool(abs_err < 1e-6), analytical.tolist()
        (0, True, [2.0, 0.0, 0.0, 4.0])
    """
    from ..tensor import Tensor
    inputs = _tuple(inputs)
    diff_idx = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]
    num = _numerical(func, inputs, diff_idx, eps)
    ana = _analytical(func, inputs, diff_idx)
    report = []
    for n, i in enumerate(diff_idx):
        a = np.concatenate([b.ravel() for b in ana[n]]) if ana[n] else np.zeros(0)
        m = np.concatenate([b.ravel() for b in num[n]]) if num[n] else np.zeros(0)
        err = np.abs(a - m)
        worst_abs = float(np.max(err)) if err.size else 0.0  # NaN if any entry is NaN
        worst_rel = float(np.max(err / np.maximum(np.abs(m), 1e-12))) if err.size else 0.0
        report.append((i, worst_abs, worst_rel, a, m))
    return report


def gradcheck(func, inputs, *, eps: float = 1e-6, atol: float = 1e-5, rtol: float = 1e-3,
              raise_exception: bool = True, **_ignored) -> bool:
    """Check analytical gradients of ``func`` against central finite differences
    (``torch.autograd.gradcheck``).

    Passes when every Jacobian entry satisfies |analytical - numerical| <= atol + rtol |numerical|.
    Use float64 inputs with ``requires_grad=True``. On failure raises :class:`GradcheckError`
    listing, per input, the worst absolute and relative errors.

    Example:
        >>> import avila_ml as am
        >>> x = am.randn(3, dtype=am.float64, requires_grad=True)
        >>> am.autograd.gradcheck(lambda t: (t.sin() * t).sum(), (x,))
        True
    """
    from ..tensor import Tensor
    inputs = _tuple(inputs)
    for i, t in enumerate(inputs):
        if isinstance(t, Tensor) and t.requires_grad and t.array.dtype != np.float64:
            warnings.warn(f"gradcheck: input {i} is {t.dtype}, not float64; finite differences will be inaccurate", stacklevel=2)
    report = jacobian_errors(func, inputs, eps)
    failed = []
    for i, worst_abs, worst_rel, a, m in report:
        # written as "not close" so a NaN on either side fails, as in torch.allclose
        bad = ~(np.abs(a - m) <= atol + rtol * np.abs(m))
        if bad.any():
            j = int(np.argmax(np.where(bad, np.nan_to_num(np.abs(a - m), nan=np.inf), -1.0)))
            failed.append(
                f"input {i}: worst abs error {worst_abs:.3e}, worst rel error {worst_rel:.3e} "
                f"({int(bad.sum())} of {bad.size} Jacobian entries out of tolerance; e.g. "
                f"analytical {a[j]:.6g} vs numerical {m[j]:.6g})"
            )
    if failed:
        if raise_exception:
            raise GradcheckError("gradcheck: Jacobian mismatch (atol=%g, rtol=%g):\n  " % (atol, rtol) + "\n  ".join(failed))
        return False
    return True


def gradgradcheck(func, inputs, grad_outputs=None, *, eps: float = 1e-6, atol: float = 1e-5,
                  rtol: float = 1e-3, raise_exception: bool = True, **_ignored) -> bool:
    """Check second derivatives: gradcheck of the map (inputs, v) -> v^T J(inputs)
    (``torch.autograd.gradgradcheck``). ``grad_outputs`` default to random float64 tensors.

    Example:
        >>> import avila_ml as am
        >>> x = am.randn(3, dtype=am.float64, requires_grad=True)
        >>> am.autograd.gradgradcheck(lambda t: t.exp() * t, (x,))
        True
    """
    from . import grad
    from ..factories import randn
    from ..tensor import Tensor
    inputs = _tuple(inputs)
    n = len(inputs)
    outs = _outputs(func, inputs)
    if grad_outputs is None:
        grad_outputs = tuple(randn(*o.shape, dtype=o.dtype, device=o.device, requires_grad=True) for o in outs)
    grad_outputs = _tuple(grad_outputs)
    diff_idx = [i for i, t in enumerate(inputs) if isinstance(t, Tensor) and t.requires_grad]

    def first_derivative(*args):
        ins, gos = args[:n], args[n:]
        o = _outputs(func, ins)
        diff = [ins[i] for i in diff_idx]
        gs = grad(list(o), diff, list(gos), create_graph=True, allow_unused=True)
        return tuple(g for g in gs if g is not None)

    return gradcheck(first_derivative, inputs + grad_outputs, eps=eps, atol=atol, rtol=rtol,
                     raise_exception=raise_exception)
