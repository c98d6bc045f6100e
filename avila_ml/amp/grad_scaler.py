"""``GradScaler``: dynamic loss scaling for float16 training (``torch.amp.GradScaler``).

float16 gradients underflow to zero below ~6e-8. Multiplying the loss by a large scale ``S``
lifts them into range; ``unscale_`` divides the gradients by ``S`` again (in their own float32
storage) and checks them for inf/NaN. ``step`` skips the optimizer step when any was found, and
``update`` then adapts ``S``: times ``backoff_factor`` after an overflow, times
``growth_factor`` after ``growth_interval`` clean steps in a row.
"""
from __future__ import annotations

import numpy as np

__all__ = ["GradScaler"]

_READY, _UNSCALED, _STEPPED = 0, 1, 2


class GradScaler:
    """Scale the loss, unscale and check the gradients, skip overflowing steps, adapt the scale
    (``torch.amp.GradScaler``; also ``avila_ml.cuda.amp.GradScaler``).

    Math: with scale ``S``: backward of ``S * loss`` gives ``S * g``; ``unscale_`` sets
    ``g <- (S * g) * (1 / S)`` (``1 / S`` rounded to float32, as PyTorch); an inf/NaN anywhere
    skips ``optimizer.step()`` and sets ``S <- S * backoff_factor``; ``growth_interval`` clean
    steps in a row set ``S <- S * growth_factor`` (kept only if finite). ``S`` is a float32.

    Example:
        >>> import avila_ml as am
        >>> w = am.nn.Parameter(am.ones(2))
        >>> opt = am.optim.SGD([w], lr=0.1)
        >>> scaler = am.amp.GradScaler("cpu", init_scale=1024.0, growth_interval=1)
        >>> scaler.scale((w * 3).sum()).backward()
        >>> scaler.step(opt); scaler.update()
        >>> w.grad, scaler.get_scale()
        (tensor([3., 3.]), 2048.0)
    """

    def __init__(self, device: str = "cuda", init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, enabled: bool = True):
        if device not in ("cpu", "cuda"):
            raise ValueError(f"GradScaler: device must be 'cpu' or 'cuda', got {device!r}")
        if not growth_factor > 1.0:
            raise ValueError(f"GradScaler: growth_factor should be > 1, got {growth_factor}")
        if not 0.0 < backoff_factor < 1.0:
            raise ValueError(f"GradScaler: backoff_factor should be in (0, 1), got {backoff_factor}")
        if not isinstance(growth_interval, int) or isinstance(growth_interval, bool) or growth_interval <= 0:
            raise ValueError(f"GradScaler: growth_interval should be a positive int, got {growth_interval!r}")
        self._device = device
        self._enabled = bool(enabled)
        self._init_scale = float(init_scale)
        self._scale = None  # float32, created at the first scale() like PyTorch's lazy tensor
        self._growth_factor = float(growth_factor)
        self._backoff_factor = float(backoff_factor)
        self._growth_interval = growth_interval
        self._growth_tracker = 0
        self._per_optimizer = {}

    # -- scaling ---------------------------------------------------------------------------
    def _lazy_init(self):
        if self._scale is None:
            self._scale = np.float32(self._init_scale)
            self._growth_tracker = 0

    def scale(self, outputs):
        """Multiply ``outputs`` (a Tensor or nested lists/tuples of them) by the scale."""
        if not self._enabled:
            return outputs
        self._lazy_init()
        from ..tensor import Tensor

        def one(x):
            if isinstance(x, Tensor):
                return x * float(self._scale)
            if isinstance(x, (list, tuple)):
                return type(x)(one(v) for v in x)
            raise ValueError(f"GradScaler.scale: outputs must be a Tensor or an iterable of Tensors, got {type(x).__name__}")

        return one(outputs)

    def _state(self, optimizer):
        st = self._per_optimizer.get(id(optimizer))
        if st is None or st[0] is not optimizer:
            st = self._per_optimizer[id(optimizer)] = [optimizer, _READY, None]
        return st

    def unscale_(self, optimizer) -> None:
        """Divide the gradients of ``optimizer``'s parameters by the scale, in place, and record
        whether any is inf/NaN (call it before clipping gradients)."""
        if not self._enabled:
            return
        st = self._state(optimizer)
        if st[1] == _UNSCALED:
            raise RuntimeError("unscale_() has already been called on this optimizer since the last update().")
        if st[1] == _STEPPED:
            raise RuntimeError("unscale_() is being called after step().")
        if self._scale is None:
            raise RuntimeError("GradScaler.unscale_: scale() was never called, so there is nothing to unscale")
        inv = np.float32(1.0 / np.float64(self._scale))
        found = False
        for group in optimizer.param_groups:
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.array.dtype == np.float16:
                    raise ValueError("Attempting to unscale FP16 gradients: keep the parameters in "
                                     "float32 and let autocast cast them (grads then arrive in float32).")
                a = g.array
                xp = g._backend.xp
                a *= a.dtype.type(inv)
                if not bool(xp.isfinite(a).all()):
                    found = True
        st[1] = _UNSCALED
        st[2] = found

    def step(self, optimizer, *args, **kwargs):
        """``unscale_`` (if not done yet), then ``optimizer.step()`` unless an inf/NaN gradient
        was found; returns what ``optimizer.step`` returned, or None when skipped."""
        if not self._enabled:
            return optimizer.step(*args, **kwargs)
        if "closure" in kwargs:
            raise RuntimeError("Closure use is not currently supported if GradScaler is enabled.")
        st = self._state(optimizer)
        if st[1] == _STEPPED:
            raise RuntimeError("step() has already been called since the last update().")
        if st[1] == _READY:
            self.unscale_(optimizer)
        st[1] = _STEPPED
        if st[2]:
            return None
        return optimizer.step(*args, **kwargs)

    def update(self, new_scale=None) -> None:
        """Adapt the scale after this iteration's steps (or set it to ``new_scale``)."""
        if not self._enabled:
            return
        if self._scale is None:
            self._per_optimizer.clear()
            return
        if new_scale is not None:
            from ..tensor import Tensor
            if isinstance(new_scale, Tensor):
                if new_scale.numel() != 1:
                    raise ValueError("GradScaler.update: new_scale should be a one-element tensor")
                new_scale = new_scale.item()
            self._scale = np.float32(new_scale)
        else:
            found = [st[2] for st in self._per_optimizer.values() if st[2] is not None]
            if not found:
                raise RuntimeError("GradScaler.update: no inf checks were recorded prior to update() "
                                   "(call step() or unscale_() first)")
            if any(found):
                self._scale = np.float32(self._scale * np.float32(self._backoff_factor))
                self._growth_tracker = 0
            else:
                successful = self._growth_tracker + 1
                if successful == self._growth_interval:
                    with np.errstate(over="ignore"):  # growth past float32's max is refused below
                        grown = np.float32(self._scale * np.float32(self._growth_factor))
                    if np.isfinite(grown):
                        self._scale = grown
                    self._growth_tracker = 0
                else:
                    self._growth_tracker = successful
        self._per_optimizer.clear()

    # -- queries and state -------------------------------------------------------------------
    def get_scale(self) -> float:
        """The current scale as a Python float (1.0 when disabled)."""
        if not self._enabled:
            return 1.0
        return float(self._init_scale if self._scale is None else self._scale)

    def get_growth_factor(self) -> float:
        return self._growth_factor

    def set_growth_factor(self, new_factor: float) -> None:
        self._growth_factor = float(new_factor)

    def get_backoff_factor(self) -> float:
        return self._backoff_factor

    def set_backoff_factor(self, new_factor: float) -> None:
        self._backoff_factor = float(new_factor)

    def get_growth_interval(self) -> int:
        return self._growth_interval

    def set_growth_interval(self, new_interval: int) -> None:
        self._growth_interval = int(new_interval)

    def is_enabled(self) -> bool:
        return self._enabled

    def state_dict(self) -> dict:
        """``scale``, ``growth_factor``, ``backoff_factor``, ``growth_interval``,
        ``_growth_tracker`` (empty when disabled), as PyTorch's."""
        if not self._enabled:
            return {}
        return {"scale": self.get_scale(), "growth_factor": self._growth_factor,
                "backoff_factor": self._backoff_factor, "growth_interval": self._growth_interval,
                "_growth_tracker": self._growth_tracker}

    def load_state_dict(self, state_dict: dict) -> None:
        """Restore a :meth:`state_dict` (PyTorch's GradScaler state dicts load too)."""
        if not self._enabled:
            return
        if len(state_dict) == 0:
            raise RuntimeError("The source state dict is empty, possibly because it was saved "
                               "from a disabled instance of GradScaler.")
        self._init_scale = float(state_dict["scale"])
        if self._scale is not None:
            self._scale = np.float32(state_dict["scale"])
        self._growth_factor = float(state_dict["growth_factor"])
        self._backoff_factor = float(state_dict["backoff_factor"])
        self._growth_interval = int(state_dict["growth_interval"])
        self._growth_tracker = int(state_dict["_growth_tracker"])
