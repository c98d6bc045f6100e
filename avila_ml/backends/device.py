"""Device strings ("cpu", "cuda", "cuda:N") parsed into :class:`device` objects."""
from __future__ import annotations

__all__ = ["device"]


class device:
    """Where a tensor lives, mirroring ``torch.device``.

    ``device("cpu")``, ``device("cuda")`` (the current GPU, index 0), ``device("cuda:1")``
    or ``device("cuda", 1)``. A device compares equal to its string form.

    Used as a context manager it sets the default device of factories for the block.

    Example:
        >>> from avila_ml import device, zeros
        >>> device("cuda:1").index, device("cpu") == "cpu"
        (1, True)
        >>> with device("cpu"):
        ...     zeros(2).device
        device(type='cpu')
    """

    __slots__ = ("type", "index")

    def __init__(self, spec, index: int | None = None):
        if isinstance(spec, device):
            self.type, self.index = spec.type, spec.index
            return
        if not isinstance(spec, str):
            raise TypeError(f"device: expected a string like 'cpu' or 'cuda:0', got {spec!r}")
        kind, _, num = spec.strip().lower().partition(":")
        if kind not in ("cpu", "cuda"):
            raise ValueError(f"device: unknown device type {spec!r}; expected 'cpu', 'cuda' or 'cuda:N'")
        if num:
            if index is not None:
                raise ValueError(f"device: index given twice in {spec!r} and index={index}")
            if not num.isdigit():
                raise ValueError(f"device: bad device index in {spec!r}")
            index = int(num)
        if kind == "cpu":
            if index not in (None, 0):
                raise ValueError(f"device: cpu has no index {index}")
            index = None
        elif index is None:
            index = 0
        elif index < 0:
            raise ValueError(f"device: negative CUDA index {index}")
        self.type, self.index = kind, index

    def __str__(self) -> str:
        return self.type if self.index is None else f"{self.type}:{self.index}"

    def __repr__(self) -> str:
        return f"device(type='{self.type}'" + ("" if self.index is None else f", index={self.index}") + ")"

    def __eq__(self, other) -> bool:
        if isinstance(other, str):
            try:
                other = device(other)
            except (ValueError, TypeError):
                return False
        return isinstance(other, device) and self.type == other.type and self.index == other.index

    def __hash__(self) -> int:
        return hash((self.type, self.index))

    def __reduce__(self):
        return (device, (str(self),))

    def __enter__(self) -> "device":
        """``with device("cuda"):`` makes this the default device of factories inside the
        block (``torch.device`` as a context manager); the previous default comes back after."""
        from . import get_default_device, set_default_device
        _context_stack.append(get_default_device())
        set_default_device(self)
        return self

    def __exit__(self, *exc) -> None:
        from . import set_default_device
        set_default_device(_context_stack.pop())


_context_stack: list = []  # the defaults to restore, innermost last
