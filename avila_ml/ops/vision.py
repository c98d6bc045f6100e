"""Image-geometry ops: ``unfold``/``fold`` (im2col and its adjoint), ``pixel_shuffle`` /
``pixel_unshuffle``, ``affine_grid`` and ``grid_sample`` in 2-d and 3-d (``torch.nn.functional``).

``unfold`` and ``fold`` are adjoint linear maps, so each is one ``Function`` whose backward is
the other (Chainer's im2col/col2im pair); double backward follows. ``grid_sample`` is a
composition of differentiable ops (coordinate maps, a gather per corner, weighted sums), so its
gradients with respect to the input *and* the grid, and their derivatives, come for free and
follow PyTorch's formulas (``GridSampler.cpp``) term by term.
"""
from __future__ import annotations

import itertools

import numpy as np

from ..autograd.function import Function
from ..backends import backend_of
from ..tensor import Tensor
from .elementwise import abs as _abs, clamp, floor, remainder, where
from .indexing import gather
from .linalg import matmul
from .shape import permute, reshape, squeeze, unsqueeze

__all__ = ["unfold", "fold", "pixel_shuffle", "pixel_unshuffle", "affine_grid", "grid_sample"]


# -- unfold / fold ---------------------------------------------------------------------------
def _pair(v, name, op):
    t = (v, v) if isinstance(v, (int, np.integer)) else tuple(v)
    if len(t) != 2 or not all(isinstance(x, (int, np.integer)) for x in t):
        raise ValueError(f"{op}: {name} must be an int or a pair of ints, got {v!r}")
    return tuple(int(x) for x in t)


def _blocks(size, kernel, dilation, padding, stride):
    return tuple((size[i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1 for i in range(2))


class Im2Col(Function):
    """(N, C, H, W) -> (N, C·kh·kw, L): every kernel-sized block as a column."""

    def forward(self, x, kernel, dilation, padding, stride):
        self.args = (x.shape[2:], kernel, dilation, padding, stride)
        xp = backend_of(x).xp
        n, c = x.shape[:2]
        (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
        oh, ow = _blocks(x.shape[2:], kernel, dilation, padding, stride)
        xpad = xp.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))) if ph or pw else x
        cols = xp.empty((n, c, kh, kw, oh, ow), dtype=x.dtype)
        for i in range(kh):
            for j in range(kw):
                cols[:, :, i, j] = xpad[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw]
        return cols.reshape(n, c * kh * kw, oh * ow)

    def backward(self, g):
        return Col2Im.apply(g, *self.args)


class Col2Im(Function):
    """(N, C·kh·kw, L) -> (N, C, H, W): columns summed back into their blocks (adjoint of Im2Col)."""

    def forward(self, cols, size, kernel, dilation, padding, stride):
        self.args = (kernel, dilation, padding, stride)
        xp = backend_of(cols).xp
        (kh, kw), (dh, dw), (ph, pw), (sh, sw) = kernel, dilation, padding, stride
        oh, ow = _blocks(size, kernel, dilation, padding, stride)
        n = cols.shape[0]
        c = cols.shape[1] // (kh * kw)
        blocks = cols.reshape(n, c, kh, kw, oh, ow)
        out = xp.zeros((n, c, size[0] + 2 * ph, size[1] + 2 * pw), dtype=cols.dtype)
        for i in range(kh):
            for j in range(kw):
                out[:, :, i * dh:i * dh + sh * (oh - 1) + 1:sh, j * dw:j * dw + sw * (ow - 1) + 1:sw] += blocks[:, :, i, j]
        return out[:, :, ph:ph + size[0], pw:pw + size[1]] if ph or pw else out

    def backward(self, g):
        return Im2Col.apply(g, *self.args)


def _geometry(op, kernel_size, dilation, padding, stride):
    k = _pair(kernel_size, "kernel_size", op)
    d = _pair(dilation, "dilation", op)
    p = _pair(padding, "padding", op)
    s = _pair(stride, "stride", op)
    if min(k) <= 0 or min(d) <= 0 or min(s) <= 0 or min(p) < 0:
        raise RuntimeError(f"{op}: kernel_size, dilation and stride must be positive and padding non-negative, "
                           f"got kernel_size={k}, dilation={d}, padding={p}, stride={s}")
    return k, d, p, s


def unfold(input, kernel_size, dilation=1, padding=0, stride=1):
    """Extract sliding local blocks as columns, im2col (``torch.nn.functional.unfold``).

    Math: for input (N, C, H, W), out[n, (c·kh + i)·kw + j, l] = x_pad[n, c, s_h·y_l + d_h·i,
    s_w·x_l + d_w·j] over the L = L_h·L_w block positions,
    L_h = ⌊(H + 2p_h - d_h(k_h - 1) - 1)/s_h⌋ + 1. 3-d (unbatched) input is accepted.

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.unfold(am.arange(9.0).reshape(1, 1, 3, 3), 2)
        tensor([[[0., 1., 3., 4.],
                 [1., 2., 4., 5.],
                 [3., 4., 6., 7.],
                 [4., 5., 7., 8.]]])
    """
    op = "unfold"
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(input).__name__}")
    if input.ndim not in (3, 4):
        raise RuntimeError(f"{op}: Input Error: Only 3D or 4D input Tensors are supported (got {input.ndim}D)")
    k, d, p, s = _geometry(op, kernel_size, dilation, padding, stride)
    x = unsqueeze(input, 0) if input.ndim == 3 else input
    blocks = _blocks(x.shape[2:], k, d, p, s)
    if min(blocks) <= 0:
        raise RuntimeError(f"{op}: the kernel {k} with dilation {d} does not fit the padded input of spatial "
                           f"size {tuple(x.shape[2:])} with padding {p}")
    out = Im2Col.apply(x, k, d, p, s)
    return squeeze(out, 0) if input.ndim == 3 else out


def fold(input, output_size, kernel_size, dilation=1, padding=0, stride=1):
    """Sum sliding local blocks back into an image, col2im (``torch.nn.functional.fold``).

    Math: the adjoint of :func:`unfold`: out[n, c, y, x] = Σ of every column entry that
    ``unfold`` would read from (y, x); input (N, C·kh·kw, L) or (C·kh·kw, L).

    Example:
        >>> import avila_ml as am
        >>> F = am.nn.functional
        >>> F.fold(F.unfold(am.ones(1, 1, 3, 3), 2), (3, 3), 2)   # how many blocks cover each pixel
        tensor([[[[1., 2., 1.],
                  [2., 4., 2.],
                  [1., 2., 1.]]]])
    """
    op = "fold"
    if not isinstance(input, Tensor):
        raise TypeError(f"{op}: expected a Tensor, got {type(input).__name__}")
    if input.ndim not in (2, 3):
        raise RuntimeError(f"{op}: Input Error: Only unbatched (2D) or batched (3D) input Tensors are supported "
                           f"(got {input.ndim}D)")
    size = _pair(output_size, "output_size", op)
    k, d, p, s = _geometry(op, kernel_size, dilation, padding, stride)
    x = unsqueeze(input, 0) if input.ndim == 2 else input
    if x.shape[1] % (k[0] * k[1]):
        raise RuntimeError(f"{op}: Expected size of input's dimension 1 to be divisible by the product of "
                           f"kernel_size, but got input.size(1)={x.shape[1]} and kernel_size={k}")
    blocks = _blocks(size, k, d, p, s)
    if x.shape[2] != blocks[0] * blocks[1] or min(blocks) <= 0:
        raise RuntimeError(f"{op}: Given output_size={size}, kernel_size={k}, dilation={d}, padding={p}, "
                           f"stride={s}, expected size of input's dimension 2 to match the calculated number "
                           f"of sliding blocks {blocks[0]} * {blocks[1]} = {blocks[0] * blocks[1]}, but got "
                           f"input.size(2)={x.shape[2]}.")
    out = Col2Im.apply(x, size, k, d, p, s)
    return squeeze(out, 0) if input.ndim == 2 else out


# -- pixel shuffle ---------------------------------------------------------------------------
def pixel_shuffle(input, upscale_factor: int):
    """Rearrange (*, C·r², H, W) into (*, C, H·r, W·r) (``torch.nn.functional.pixel_shuffle``).

    Math: out[..., c, h·r + i, w·r + j] = x[..., c·r² + i·r + j, h, w].

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.pixel_shuffle(am.arange(4.0).reshape(1, 4, 1, 1), 2)
        tensor([[[[0., 1.],
                  [2., 3.]]]])
    """
    r = int(upscale_factor)
    if input.ndim < 3:
        raise RuntimeError(f"pixel_shuffle expects input to have at least 3 dimensions, but got input with "
                           f"{input.ndim} dimension(s)")
    if r <= 0:
        raise RuntimeError(f"pixel_shuffle expects a positive upscale_factor, but got {r}")
    *lead, c, h, w = input.shape
    if c % (r * r):
        raise RuntimeError(f"pixel_shuffle expects its input's 'channel' dimension to be divisible by the square "
                           f"of upscale_factor, but input.size(-3)={c} is not divisible by {r * r}")
    k = len(lead)
    x = reshape(input, (*lead, c // (r * r), r, r, h, w))
    x = permute(x, *range(k), k, k + 3, k + 1, k + 4, k + 2)
    return reshape(x, (*lead, c // (r * r), h * r, w * r))


def pixel_unshuffle(input, downscale_factor: int):
    """Rearrange (*, C, H·r, W·r) into (*, C·r², H, W), the inverse of :func:`pixel_shuffle`
    (``torch.nn.functional.pixel_unshuffle``).

    Math: out[..., c·r² + i·r + j, h, w] = x[..., c, h·r + i, w·r + j].

    Example:
        >>> import avila_ml as am
        >>> am.nn.functional.pixel_unshuffle(am.arange(4.0).reshape(1, 1, 2, 2), 2).flatten()
        tensor([0., 1., 2., 3.])
    """
    r = int(downscale_factor)
    if input.ndim < 3:
        raise RuntimeError(f"pixel_unshuffle expects input to have at least 3 dimensions, but got input with "
                           f"{input.ndim} dimension(s)")
    if r <= 0:
        raise RuntimeError(f"pixel_unshuffle expects a positive downscale_factor, but got {r}")
    *lead, c, h, w = input.shape
    if h % r or w % r:
        raise RuntimeError(f"pixel_unshuffle expects height ({h}) and width ({w}) to be divisible by "
                           f"downscale_factor ({r})")
    k = len(lead)
    x = reshape(input, (*lead, c, h // r, r, w // r, r))
    x = permute(x, *range(k), k, k + 2, k + 4, k + 1, k + 3)
    return reshape(x, (*lead, c * r * r, h // r, w // r))


# -- affine_grid / grid_sample ------------------------------------------------------------------
def _linspace(n, align_corners, dtype, xp):
    """The normalised coordinates of n pixel centres (align_corners=False) or corners (True)."""
    if n <= 1:
        return xp.zeros(1, dtype=dtype)
    r = xp.linspace(-1, 1, n, dtype=dtype)
    return r if align_corners else r * ((n - 1) / n)


def affine_grid(theta, size, align_corners=None):
    """Sampling grid of an affine map, for :func:`grid_sample` (``torch.nn.functional.affine_grid``).

    Math: for ``size`` (N, C, H, W) and ``theta`` (N, 2, 3), grid[n, i, j] = θₙ · (x_j, y_i, 1)
    with x, y the normalised pixel coordinates in [-1, 1] (pixel centres unless
    ``align_corners``); 3-d: ``size`` (N, C, D, H, W), ``theta`` (N, 3, 4), grid (N, D, H, W, 3)
    of θₙ · (x, y, z, 1). Differentiable with respect to ``theta``.

    Example:
        >>> import avila_ml as am
        >>> theta = am.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]])
        >>> am.nn.functional.affine_grid(theta, (1, 1, 1, 2), align_corners=True)
        tensor([[[[-1.,  0.],
                  [ 1.,  0.]]]])
    """
    align_corners = bool(align_corners) if align_corners is not None else False
    size = tuple(int(s) for s in size)
    if not isinstance(theta, Tensor) or not theta.is_floating_point():
        raise TypeError(f"affine_grid: expected theta to be a floating-point Tensor, got {getattr(theta, 'dtype', type(theta).__name__)}")
    if len(size) == 4:
        n, _, h, w = size
        if tuple(theta.shape) != (n, 2, 3):
            raise ValueError(f"affine_grid: Expected a batch of 2D affine matrices of shape Nx2x3 for size "
                             f"{list(size)}. Got {list(theta.shape)}.")
        spatial = (h, w)
    elif len(size) == 5:
        n, _, d, h, w = size
        if tuple(theta.shape) != (n, 3, 4):
            raise ValueError(f"affine_grid: Expected a batch of 3D affine matrices of shape Nx3x4 for size "
                             f"{list(size)}. Got {list(theta.shape)}.")
        spatial = (d, h, w)
    else:
        raise ValueError(
            f"affine_grid only supports 4D and 5D sizes, for 2D and 3D affine transforms, respectively. "
            f"Got size {list(size)}.")
    if min(size) <= 0:
        raise ValueError(f"affine_grid: expected non-zero, positive output size. Got {list(size)}")
    xp = backend_of(theta.array).xp
    dtype = theta.array.dtype
    # coordinate order in the last dim is (x, y[, z]): the fastest-varying spatial dim first
    axes = [_linspace(s, align_corners, dtype, xp) for s in spatial[::-1]]
    k = len(spatial)
    base = xp.ones(spatial + (k + 1,), dtype=dtype)
    for i, a in enumerate(axes):
        shape = [1] * k
        shape[k - 1 - i] = a.shape[0]
        base[..., i] = a.reshape(shape)
    base = Tensor._wrap(base.reshape(1, -1, k + 1))
    grid = matmul(base, theta.mT)  # (N, prod(spatial), k)
    return reshape(grid, (n, *spatial, k))


def _unnormalize(coord, size, align_corners):
    if align_corners:
        return ((coord + 1) / 2) * (size - 1)
    return ((coord + 1) * size - 1) / 2


def _reflect(coord, twice_low, twice_high):
    """Reflect coordinates into [twice_low/2, twice_high/2] (PyTorch's reflect_coordinates)."""
    if twice_low == twice_high:
        return coord * 0
    low = twice_low / 2
    span = (twice_high - twice_low) / 2
    u = _abs(coord - low)
    flips = floor(u / span).detach()
    extra = remainder(u, span)
    even = Tensor._wrap(backend_of(flips.array).xp.remainder(flips.array, 2) == 0)
    return where(even, extra + low, (span - extra) + low)


def _source_index(coord, size, padding_mode, align_corners, nan_to):
    x = _unnormalize(coord, size, align_corners)
    if padding_mode == "border":
        x = clamp(x, 0, size - 1)
    elif padding_mode == "reflection":
        x = _reflect(x, 0, 2 * (size - 1)) if align_corners else _reflect(x, -1, 2 * size - 1)
        x = clamp(x, 0, size - 1)
    if padding_mode != "zeros":
        # PyTorch's CPU kernels clamp a NaN coordinate in these modes: to 0 in 2-d (its clamp
        # is min(max(x, 0), size - 1) with NaN-ignoring SIMD max), to size - 1 in 3-d (there
        # std::max(NaN, 0) keeps the NaN and std::min(size - 1, NaN) gives size - 1)
        nan = Tensor._wrap(backend_of(x.array).xp.isnan(x.array))
        x = where(nan, float(nan_to), x)
    return x


def grid_sample(input, grid, mode: str = "bilinear", padding_mode: str = "zeros", align_corners=None):
    """Sample ``input`` at the normalised locations in ``grid`` (``torch.nn.functional.grid_sample``).

    Math: 2-d: input (N, C, H, W), grid (N, H_o, W_o, 2) of (x, y) in [-1, 1] (-1 and 1 are the
    outer pixel edges, or the outer pixel centres if ``align_corners``); output (N, C, H_o, W_o)
    with out[n, c, i, j] = Σ_corners w · x[n, c, y_c, x_c] (``"bilinear"``: the 4 surrounding
    pixels with weights (1 - |x - x_c|)(1 - |y - y_c|); ``"nearest"``: the closest pixel, ties to
    even). 3-d: input (N, C, D, H, W), grid (N, D_o, H_o, W_o, 3) of (x, y, z), trilinear over 8
    corners. Locations outside: ``padding_mode`` ``"zeros"`` (outside pixels read as 0),
    ``"border"`` (clamped) or ``"reflection"`` (mirrored at the borders). Differentiable with
    respect to ``input`` and ``grid`` (the grid gradient of ``"nearest"`` is zero, so
    ``grid`` receives none).

    Example:
        >>> import avila_ml as am
        >>> img = am.tensor([[[[0.0, 1.0], [2.0, 3.0]]]])
        >>> grid = am.tensor([[[[0.0, 0.0], [-1.0, -1.0]]]])   # the centre, the top-left corner
        >>> am.nn.functional.grid_sample(img, grid, align_corners=True)
        tensor([[[[1.5000, 0.0000]]]])
    """
    op = "grid_sample"
    if mode not in ("bilinear", "nearest"):
        raise ValueError(f"{op}: mode must be 'bilinear' or 'nearest' (bicubic is not available), got {mode!r}")
    if padding_mode not in ("zeros", "border", "reflection"):
        raise ValueError(f"{op}: padding_mode must be 'zeros', 'border' or 'reflection', got {padding_mode!r}")
    align_corners = bool(align_corners) if align_corners is not None else False
    if not isinstance(input, Tensor) or not isinstance(grid, Tensor):
        raise TypeError(f"{op}: input and grid must be Tensors")
    k = input.ndim - 2
    if input.ndim not in (4, 5) or grid.ndim != input.ndim or grid.shape[-1] != k:
        raise RuntimeError(f"{op}: expected 4-D input with grid (N, H, W, 2) or 5-D input with grid "
                           f"(N, D, H, W, 3), got input {tuple(input.shape)} and grid {tuple(grid.shape)}")
    if grid.shape[0] != input.shape[0]:
        raise RuntimeError(f"{op}: grid and input must have the same batch size, got grid {tuple(grid.shape)} "
                           f"and input {tuple(input.shape)}")
    if input.dtype != grid.dtype:
        raise RuntimeError(f"{op}: expected input and grid to have the same dtype, but input has {input.dtype} "
                           f"and grid has {grid.dtype}")
    if min(input.shape[2:]) <= 0:
        raise RuntimeError(f"{op}: expected input to have non-empty spatial dimensions, got {tuple(input.shape)}")
    xp = backend_of(input.array).xp
    n, c = input.shape[:2]
    in_spatial = tuple(input.shape[2:])      # (H, W) or (D, H, W)
    out_spatial = tuple(grid.shape[1:-1])
    m = int(np.prod(out_spatial))
    flat_in = reshape(input, (n, c, int(np.prod(in_spatial))))
    g = reshape(grid, (n, m, k))
    # source coordinates per axis, in the grid's order (x, y[, z]) = (W, H[, D])
    sizes = in_spatial[::-1]
    nan_to = [0 if k == 2 else sizes[a] - 1 for a in range(k)]
    coords = [_source_index(g[..., a], sizes[a], padding_mode, align_corners, nan_to[a]) for a in range(k)]
    strides = [int(np.prod(sizes[:a])) for a in range(k)]  # x is the fastest-varying axis

    def read(corner):  # corner: per-axis integer coordinates (arrays); returns (N, C, M) and validity
        valid = xp.ones((n, m), dtype=bool)
        flat = xp.zeros((n, m), dtype=np.int64)
        for a, ca in enumerate(corner):
            valid &= (ca >= 0) & (ca <= sizes[a] - 1)  # False for a NaN coordinate too
            # a NaN/inf coordinate reads pixel 0 (masked below), never an undefined int cast
            flat += xp.clip(xp.where(xp.isfinite(ca), ca, 0), 0, sizes[a] - 1).astype(np.int64) * strides[a]
        idx = Tensor._wrap(xp.broadcast_to(flat[:, None, :], (n, c, m)))
        # outside pixels read as 0 (not 0 * pixel: an inf/NaN pixel must not leak into them)
        return where(Tensor._wrap(valid[:, None, :]), gather(flat_in, 2, idx), 0), valid

    if mode == "nearest":
        out = read([xp.rint(ca.array) for ca in coords])[0]
    else:
        lows = [floor(ca).detach() for ca in coords]
        wc, wl = coords, lows  # what the weights are computed from
        if k == 3:
            # PyTorch's 3-d kernel skips a corner outside the input: a point with a non-finite
            # coordinate (every corner outside) gives 0 and a zero grid gradient, where its 2-d
            # kernel gives NaN (0 * NaN weight): weights from a finite stand-in, masked below
            bad = ~xp.isfinite(coords[0].array)
            for ca in coords[1:]:
                bad = bad | ~xp.isfinite(ca.array)
            wc = [where(bad, 0.0, ca) for ca in coords]
            wl = [floor(ca).detach() for ca in wc]
        out = None
        for offs in itertools.product((0, 1), repeat=k):
            w = None
            for a, o in enumerate(offs):
                # PyTorch's form: (low + 1 - x) for the low corner, (x - low) for the high one
                wa = (wl[a] + 1 - wc[a]) if o == 0 else (wc[a] - wl[a])
                w = wa if w is None else w * wa
            val, valid = read([lows[a].array + offs[a] for a in range(k)])
            if k == 3:
                w = where(valid, w, 0.0)
            term = val * unsqueeze(w, 1)
            out = term if out is None else out + term
    return reshape(out, (n, c) + out_spatial)

