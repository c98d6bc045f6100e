"""L-BFGS: a quasi-Newton method from the last few gradient differences, with an optional
strong-Wolfe line search (Nocedal & Wright, *Numerical Optimization*, algorithms 7.4, 3.5, 3.6)."""
from __future__ import annotations

from ..autograd.grad_mode import enable_grad, no_grad
from ..backends import backend_of
from ..tensor import Tensor
from .optimizer import Optimizer, _is_real

__all__ = ["LBFGS"]


def _cubic_min(x1, f1, g1, x2, f2, g2, bounds=None):
    """The minimiser of the cubic through (x1, f1, f'=g1) and (x2, f2, f'=g2), clipped to
    ``bounds`` (default: the interval between x1 and x2); the midpoint if the cubic has no
    minimum."""
    lo, hi = bounds if bounds is not None else ((x1, x2) if x1 <= x2 else (x2, x1))
    d1 = g1 + g2 - 3 * (f1 - f2) / (x1 - x2)
    disc = d1 ** 2 - g1 * g2
    if disc < 0:
        return (lo + hi) / 2.0
    d2 = disc ** 0.5
    if x1 <= x2:
        x = x2 - (x2 - x1) * ((g2 + d2 - d1) / (g2 - g1 + 2 * d2))
    else:
        x = x1 - (x1 - x2) * ((g1 + d2 - d1) / (g1 - g2 + 2 * d2))
    return min(max(x, lo), hi)


def _strong_wolfe(evaluate, t, d, f, g, gtd, xp, c1=1e-4, c2=0.9, tolerance_change=1e-9, max_ls=25):
    """Find a step ``t`` along ``d`` satisfying the strong Wolfe conditions
    ``f(t) ≤ f + c1·t·gtd`` and ``|f'(t)| ≤ c2·|gtd|``: bracket, then zoom by cubic
    interpolation. ``evaluate(t)`` returns (loss, flat gradient) at ``x + t·d``. Returns
    ``(loss, grad, t, evaluations)``."""
    d_scale = float(xp.abs(d).max())
    f_new, g_new = evaluate(t)
    evals = 1
    gtd_new = float(g_new.dot(d))
    t_prev, f_prev, g_prev, gtd_prev = 0, f, g.copy(), gtd
    done = False
    it = 0
    # phase 1: grow the step until an interval [lo, hi] must contain an acceptable point
    while it < max_ls:
        if f_new > f + c1 * t * gtd or (it > 1 and f_new >= f_prev):
            pts, fs, gs, gtds = [t_prev, t], [f_prev, f_new], [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        if abs(gtd_new) <= -c2 * gtd:  # already acceptable
            pts, fs, gs = [t], [f_new], [g_new]
            done = True
            break
        if gtd_new >= 0:  # the slope turned: the minimum is behind us
            pts, fs, gs, gtds = [t_prev, t], [f_prev, f_new], [g_prev, g_new.copy()], [gtd_prev, gtd_new]
            break
        t_next = _cubic_min(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                            bounds=(t + 0.01 * (t - t_prev), t * 10))
        t_prev, f_prev, g_prev, gtd_prev = t, f_new, g_new.copy(), gtd_new
        t = t_next
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = float(g_new.dot(d))
        it += 1
    if it == max_ls:  # out of evaluations while still growing
        pts, fs, gs = [0, t], [f, f_new], [g, g_new]
    # phase 2: shrink the bracket around the best point ("zoom")
    stalled = False
    low, high = (0, 1) if fs[0] <= fs[-1] else (1, 0)
    while not done and it < max_ls:
        if abs(pts[1] - pts[0]) * d_scale < tolerance_change:
            break
        t = _cubic_min(pts[0], fs[0], gtds[0], pts[1], fs[1], gtds[1])
        # keep t away from the bracket's ends, else interpolation can crawl
        top, bottom = max(pts), min(pts)
        margin = 0.1 * (top - bottom)
        if min(top - t, t - bottom) < margin:
            if stalled or t >= top or t <= bottom:
                t = top - margin if abs(t - top) < abs(t - bottom) else bottom + margin
                stalled = False
            else:
                stalled = True
        else:
            stalled = False
        f_new, g_new = evaluate(t)
        evals += 1
        gtd_new = float(g_new.dot(d))
        it += 1
        if f_new > f + c1 * t * gtd or f_new >= fs[low]:
            pts[high], fs[high], gs[high], gtds[high] = t, f_new, g_new.copy(), gtd_new
            low, high = (0, 1) if fs[0] <= fs[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (pts[high] - pts[low]) >= 0:
                pts[high], fs[high], gs[high], gtds[high] = pts[low], fs[low], gs[low], gtds[low]
            pts[low], fs[low], gs[low], gtds[low] = t, f_new, g_new.copy(), gtd_new
    return fs[low], gs[low], pts[low], evals


class LBFGS(Optimizer):
    """Limited-memory BFGS (``torch.optim.LBFGS``).

    Each ``step(closure)`` runs up to ``max_iter`` iterations on the parameters flattened into
    one vector ``x`` with gradient ``g``::

        d = -H g,  H from the last ``history_size`` pairs (s = Δx, y = Δg) with yᵀs > 1e-10 by
        the two-loop recursion, H₀ = (yᵀs / yᵀy)·I
        t = lr (first iteration ever: min(1, 1/‖g‖₁)·lr), or a strong-Wolfe line search
        x ← x + t·d

    and stops early when max |g| ≤ tolerance_grad, max |t·d| ≤ tolerance_change, the loss
    changes by less than tolerance_change, the directional derivative gᵀd > -tolerance_change,
    or ``max_eval`` closure evaluations are used. The algorithm and its stopping rules follow
    PyTorch's, so float64 trajectories agree with it. Scalars (dot products, step sizes) are
    Python floats. Like PyTorch: one parameter group only; the state (on the first parameter)
    holds ``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs``, ``old_stps``, ``ro``,
    ``H_diag``, ``prev_flat_grad``, ``prev_loss``. Memory: ``history_size + 3`` copies of the
    parameters; steps allocate (unlike the first-order optimizers).

    Args:
        params: Tensors (one group). lr: step scale (>= 0, default 1). max_iter: iterations per
        step (default 20). max_eval: closure evaluations per step (default max_iter·5//4).
        tolerance_grad, tolerance_change: stopping tolerances. history_size: pairs kept (default
        100). line_search_fn: None or "strong_wolfe".

    Example:
        >>> import avila_ml as am
        >>> w = am.tensor([3.0, -1.0], dtype=am.float64, requires_grad=True)
        >>> opt = am.optim.LBFGS([w], line_search_fn="strong_wolfe")
        >>> def closure():
        ...     opt.zero_grad()
        ...     loss = ((w - am.tensor([1.0, 2.0], dtype=am.float64)) ** 2).sum()
        ...     loss.backward()
        ...     return loss
        >>> _ = opt.step(closure)
        >>> [round(v, 6) for v in w.tolist()]
        [1.0, 2.0]
    """

    def __init__(self, params, lr: float = 1, max_iter: int = 20, max_eval=None,
                 tolerance_grad: float = 1e-7, tolerance_change: float = 1e-9,
                 history_size: int = 100, line_search_fn=None):
        if max_eval is None and isinstance(max_iter, int):
            max_eval = max_iter * 5 // 4
        defaults = dict(lr=lr, max_iter=max_iter, max_eval=max_eval, tolerance_grad=tolerance_grad,
                        tolerance_change=tolerance_change, history_size=history_size,
                        line_search_fn=line_search_fn)
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]

    def add_param_group(self, param_group: dict) -> None:
        """Add the (single) parameter group; a second one raises ``ValueError`` as in PyTorch."""
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        super().add_param_group(param_group)

    def _check_group(self, group: dict, where: str) -> None:
        self._require_nonneg(group, where, "lr", "tolerance_grad", "tolerance_change")
        for n in ("max_iter", "max_eval", "history_size"):
            v = group.get(n)
            if n in group and (not isinstance(v, int) or isinstance(v, bool) or v < 1):
                raise self._bad(n, v, "a positive int", where)
        ls = group.get("line_search_fn")
        if ls not in (None, "strong_wolfe"):
            raise ValueError(f"LBFGS: line_search_fn must be None or 'strong_wolfe', got {ls!r}")
        if "lr" in group and not _is_real(group["lr"]):
            raise TypeError(f"LBFGS: lr must be a real number, got {group['lr']!r}")

    # -- flat views of the parameters ----------------------------------------------------------
    def _xp(self):
        return backend_of(self._params[0].array).xp

    def _flat_grad(self):
        xp = self._xp()
        parts = [xp.zeros(p.array.size, dtype=p.array.dtype) if p.grad is None else p.grad.array.reshape(-1)
                 for p in self._params]
        return xp.concatenate(parts)

    def _add_to_params(self, step: float, direction) -> None:
        """x ← x + step·direction, parameter by parameter, in place."""
        offset = 0
        for p in self._params:
            n = p.array.size
            p.array += step * direction[offset:offset + n].reshape(p.array.shape)
            p._version[0] += 1
            offset += n

    def _snapshot(self):
        return [p.array.copy() for p in self._params]

    def _restore(self, saved) -> None:
        xp = self._xp()
        for p, a in zip(self._params, saved):
            xp.copyto(p.array, a)
            p._version[0] += 1

    def _load_value(self, p, index, key, value):
        # L-BFGS state holds flat vectors and lists of them, not per-parameter buffers
        target = backend_of(p.array)

        def conv(v):
            if isinstance(v, (list, tuple)):
                return [conv(x) for x in v]
            if isinstance(v, Tensor):
                v = v.array
            if hasattr(v, "__array_interface__") or hasattr(v, "__cuda_array_interface__"):
                src = backend_of(v)
                arr = v if src is target else target.from_numpy(src.to_numpy(v))
                return Tensor._wrap(arr.astype(p.array.dtype, copy=True)) if arr.ndim else float(arr)
            return v

        if key in ("func_evals", "n_iter"):
            return int(value.item() if hasattr(value, "item") else value)
        if key in ("t", "H_diag", "prev_loss"):
            return float(value.item() if hasattr(value, "item") else value)
        if key in ("ro", "al"):
            return [None if v is None else float(v.item() if hasattr(v, "item") else v) for v in value]
        return conv(value)

    # -- the step ------------------------------------------------------------------------------
    def step(self, closure=None):
        """Run up to ``max_iter`` L-BFGS iterations; ``closure`` (required) re-evaluates the
        model, calls ``backward`` and returns the loss. Returns the loss of the first
        evaluation."""
        if closure is None:
            raise RuntimeError("LBFGS.step: requires a closure that re-evaluates the model and returns the loss")
        group = self.param_groups[0]
        lr, max_iter, max_eval = group["lr"], group["max_iter"], group["max_eval"]
        tol_grad, tol_change = group["tolerance_grad"], group["tolerance_change"]
        history_size = group["history_size"]
        xp = self._xp()

        def evaluate():
            with enable_grad():
                return closure()

        with no_grad():
            state = self.state[self._params[0]]
            state.setdefault("func_evals", 0)
            state.setdefault("n_iter", 0)
            orig_loss = evaluate()
            loss = float(orig_loss)
            evals = 1
            state["func_evals"] += 1
            g = self._flat_grad()
            if float(xp.abs(g).max()) <= tol_grad:
                return orig_loss

            arr = lambda v: None if v is None else v.array  # noqa: E731  (state holds Tensors)
            d, t = arr(state.get("d")), state.get("t")
            old_dirs = [arr(v) for v in state.get("old_dirs", [])]
            old_stps = [arr(v) for v in state.get("old_stps", [])]
            ro = list(state.get("ro", []))
            h_diag = state.get("H_diag")
            prev_g, prev_loss = arr(state.get("prev_flat_grad")), state.get("prev_loss")
            n_iter = 0
            while n_iter < max_iter:
                n_iter += 1
                state["n_iter"] += 1
                # -- the direction: d = -H g by the two-loop recursion
                if state["n_iter"] == 1:
                    d = -g
                    old_dirs, old_stps, ro, h_diag = [], [], [], 1
                else:
                    y = g - prev_g
                    s = d * t
                    ys = float(y.dot(s))
                    if ys > 1e-10:  # keep the pair only if it gives a positive-definite update
                        if len(old_dirs) == history_size:
                            old_dirs.pop(0)
                            old_stps.pop(0)
                            ro.pop(0)
                        old_dirs.append(y)
                        old_stps.append(s)
                        ro.append(1.0 / ys)
                        h_diag = ys / float(y.dot(y))
                    al = [None] * len(old_dirs)
                    q = -g
                    for i in range(len(old_dirs) - 1, -1, -1):
                        al[i] = float(old_stps[i].dot(q)) * ro[i]
                        q += (-al[i]) * old_dirs[i]
                    d = r = q * h_diag
                    for i in range(len(old_dirs)):
                        be_i = float(old_dirs[i].dot(r)) * ro[i]
                        r += (al[i] - be_i) * old_stps[i]
                prev_g = g.copy()
                prev_loss = loss
                # -- the step length
                if state["n_iter"] == 1:
                    t = min(1.0, 1.0 / float(xp.abs(g).sum())) * lr
                else:
                    t = lr
                gtd = float(g.dot(d))
                if gtd > -tol_change:  # not a descent direction any more
                    break
                if group["line_search_fn"] == "strong_wolfe":
                    x0 = self._snapshot()

                    def along(step, x0=x0, d=d):
                        self._add_to_params(step, d)
                        value = float(evaluate())
                        grad = self._flat_grad()
                        self._restore(x0)
                        return value, grad

                    loss, g, t, ls_evals = _strong_wolfe(along, t, d, loss, g, gtd, xp,
                                                         max_ls=max_eval - evals)
                    self._add_to_params(t, d)
                    converged = float(xp.abs(g).max()) <= tol_grad
                else:
                    self._add_to_params(t, d)
                    ls_evals = 0
                    converged = False
                    if n_iter != max_iter:  # re-evaluate, except after the last iteration
                        loss = float(evaluate())
                        g = self._flat_grad()
                        converged = float(xp.abs(g).max()) <= tol_grad
                        ls_evals = 1
                evals += ls_evals
                state["func_evals"] += ls_evals
                # -- stopping rules
                if n_iter == max_iter or evals >= max_eval or converged:
                    break
                if float(xp.abs(d * t).max()) <= tol_change or abs(loss - prev_loss) < tol_change:
                    break
            wrap = Tensor._wrap
            state.update(d=wrap(d), t=t, old_dirs=[wrap(v) for v in old_dirs],
                         old_stps=[wrap(v) for v in old_stps], ro=ro, H_diag=h_diag,
                         prev_flat_grad=wrap(prev_g), prev_loss=prev_loss)
        return orig_loss
