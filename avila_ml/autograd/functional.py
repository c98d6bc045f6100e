"""Higher-level derivatives built on ``grad``: ``vjp``, ``jacobian``, ``hessian``, ``hvp``
(``torch.autograd.functional``)."""
from __future__ import annotations

__all__ = ["vjp", "jacobian", "hessian", "hvp"]


def _prep(inputs):
    single = not isinstance(inputs, (tuple, list))
    ins = (inputs,) if single else tuple(inputs)
    ins = tuple(t.detach().requires_grad_(True) for t in ins)
    return single, ins


def vjp(func, inputs, v=None, create_graph: bool = False):
    """``(func(inputs), v^T J)`` (``torch.autograd.functional.vjp``).

    Example:
        >>> import avila_ml as am
        >>> x = am.tensor([1.0, 2.0])
        >>> am.autograd.functional.vjp(lambda t: t ** 2, x, am.tensor([1.0, 1.0]))
        (tensor([1., 4.], grad_fn=<PowScalarBackward0>), tensor([2., 4.]))
    """
    from . import grad
    single, ins = _prep(inputs)
    out = func(*ins)
    gs = grad(out, list(ins), v, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return out, (gs[0] if single else gs)


def jacobian(func, inputs, create_graph: bool = False):
    """The Jacobian of a single-output ``func``: shape ``out.shape + in.shape``
    (``torch.autograd.functional.jacobian``).

    Example:
        >>> import avila_ml as am
        >>> am.autograd.functional.jacobian(lambda x: x * 2, am.ones(2))
        tensor([[2., 0.],
                [0., 2.]])
    """
    from . import grad
    from ..ops.shape import stack, reshape
    from ..factories import zeros
    single, ins = _prep(inputs)
    out = func(*ins)
    flat = reshape(out, (-1,))
    rows = [[] for _ in ins]
    for k in range(flat.shape[0]):
        gs = grad(flat[k], list(ins), retain_graph=True, create_graph=create_graph, allow_unused=True,
                  materialize_grads=True)
        for r, g in zip(rows, gs):
            r.append(g)
    jac = []
    for t, r in zip(ins, rows):
        j = stack(r) if r else zeros(0, *t.shape, dtype=t.dtype)
        jac.append(reshape(j, tuple(out.shape) + tuple(t.shape)))
    return jac[0] if single else tuple(jac)


def hessian(func, inputs, create_graph: bool = False):
    """The Hessian of a scalar ``func`` of one tensor (``torch.autograd.functional.hessian``).

    Example:
        >>> import avila_ml as am
        >>> am.autograd.functional.hessian(lambda t: (t ** 3).sum(), am.tensor([1.0, 2.0]))
        tensor([[ 6.,  0.],
                [ 0., 12.]])
    """
    from . import grad
    single, ins = _prep(inputs)
    if not single:
        raise TypeError("hessian: pass a single input tensor")

    def gradient(x):
        (g,) = grad(func(x), x, create_graph=True)
        return g

    return jacobian(gradient, ins[0], create_graph=create_graph)


def hvp(func, inputs, v, create_graph: bool = False):
    """``(func(x), H v)`` for a scalar ``func`` — two backward passes, no Hessian formed
    (``torch.autograd.functional.hvp``).

    Example:
        >>> import avila_ml as am
        >>> am.autograd.functional.hvp(lambda t: (t * t * t).sum(), am.tensor([1.0, 2.0]), am.tensor([1.0, 0.0]))
        (tensor(9., grad_fn=<SumBackward0>), tensor([6., 0.]))
    """
    from . import grad
    single, ins = _prep(inputs)
    vs = (v,) if single else tuple(v)
    out = func(*ins)
    gs = grad(out, list(ins), create_graph=True)
    dot = sum((g * w).sum() for g, w in zip(gs, vs))
    hv = grad(dot, list(ins), create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return out, (hv[0] if single else hv)
