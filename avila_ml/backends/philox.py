"""Philox4x32-10 counter-based random numbers, written once for any ``xp`` (NumPy or CuPy).

A counter-based generator (Salmon et al., "Parallel random numbers: as easy as 1, 2, 3",
SC 2011; what cuRAND's Philox, PyTorch's CUDA generator and FlashAttention's dropout use)
maps ``(key, counter)`` to four 32-bit words with ten rounds of multiply/xor. The stream is a
pure function of ``(seed, offset)``: the whole generator state is two integers, a state saved
mid-stream restores exactly, and the same numbers come out of NumPy and CuPy (bit for bit:
only integer arithmetic is involved).

Round (all words 32-bit, products 64-bit)::

    hi0:lo0 = M0 * c0,  hi1:lo1 = M1 * c2
    (c0, c1, c2, c3) <- (hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0);  k0 += W0;  k1 += W1
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["philox4x32_10", "philox_uint32", "dropout_threshold", "dropout_counters", "dropout_keep", "PhiloxDraws"]

_M0, _M1 = 0xD2511F53, 0xCD9E8D57
_W0, _W1 = 0x9E3779B9, 0xBB67AE85
_MASK32 = 0xFFFFFFFF
_U64 = 1 << 64


def philox_uint32(xp, seed: int, offset: int, n: int):
    """``n`` uint32 words of the Philox4x32-10 stream of ``seed``, from counter ``offset`` on
    (four words per counter; ``ceil(n / 4)`` counters are consumed).

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends.philox import philox_uint32
        >>> a = philox_uint32(np, 7, 0, 6); b = philox_uint32(np, 7, 1, 2)
        >>> a.dtype, bool((a[4:] == b).all())
        (dtype('uint32'), True)
    """
    blocks = -(-int(n) // 4)
    counter = xp.arange(blocks, dtype=xp.uint64) + xp.uint64(offset % _U64)
    return xp.stack(philox4x32_10(xp, seed, counter), axis=1).reshape(-1)[:n].astype(xp.uint32)


def philox4x32_10(xp, seed: int, counter):
    """The four 32-bit words (as uint64 arrays, each < 2**32) of Philox4x32-10 with key
    ``seed`` (64 bits: k0 = low word, k1 = high word) at the 128-bit counters
    ``(counter mod 2**32, counter >> 32, 0, 0)`` for a uint64 array ``counter`` of any shape.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends.philox import philox4x32_10
        >>> [hex(int(w[0])) for w in philox4x32_10(np, 0, np.zeros(1, np.uint64))]
        ['0x6627e8d5', '0xe169c58d', '0xbc57ac4c', '0x9b00dbd8']
    """
    c0, c1 = counter & _MASK32, counter >> 32
    c2 = xp.zeros_like(c0)
    c3 = xp.zeros_like(c0)
    k0, k1 = seed & _MASK32, (seed >> 32) & _MASK32
    for _ in range(10):
        p0 = c0 * _M0
        p1 = c2 * _M1
        c0, c1, c2, c3 = (p1 >> 32) ^ c1 ^ k0, p1 & _MASK32, (p0 >> 32) ^ c3 ^ k1, p0 & _MASK32
        k0, k1 = (k0 + _W0) & _MASK32, (k1 + _W1) & _MASK32
    return c0, c1, c2, c3


def dropout_threshold(p: float) -> int:
    """The 32-bit threshold of dropout probability ``p``: a word ``w`` keeps iff ``w >= t``
    (so the keep rate is ``1 - t / 2**32``, ``p`` to within 2**-32).

    Example:
        >>> from avila_ml.backends.philox import dropout_threshold
        >>> dropout_threshold(0.5), dropout_threshold(0.0)
        (2147483648, 0)
    """
    return min(int(p * 4294967296.0), 4294967295)


def dropout_counters(batch: int, L: int, S: int) -> int:
    """How many Philox counters a dropout mask of ``batch`` (L, S) matrices consumes: one per
    four keys of a row (``batch * L * ceil(S / 4)``); the generator's offset advances by this.

    Example:
        >>> from avila_ml.backends.philox import dropout_counters
        >>> dropout_counters(2, 3, 5)
        12
    """
    return int(batch) * int(L) * (-(-int(S) // 4))


def dropout_keep(xp, seed: int, offset: int, p: float, L: int, S: int, b0: int, b1: int,
                 i0: int, i1: int, j0: int, j1: int):
    """The keep decisions (bool, shape (b1-b0, i1-i0, j1-j0)) of the dropout mask of
    ``batch`` (L, S) matrices at batch entries b0:b1, rows i0:i1, columns j0:j1.

    Element (b, i, j) is kept iff word ``j mod 4`` of Philox4x32-10(key = seed, counter =
    offset + (b L + i) ceil(S/4) + floor(j/4)) is >= :func:`dropout_threshold` (p): a pure
    function of its coordinates, so any tile is generated alone, the forward and backward of
    attention regenerate the same tile, and the CUDA kernels (``attention.cu``, same formula)
    agree bit for bit. Only the counters the tile covers are computed. PyTorch has no public
    equivalent: this is the role of the Philox dropout inside its fused (flash / memory-efficient)
    SDPA kernels.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends.philox import dropout_keep
        >>> full = dropout_keep(np, 5, 0, 0.5, 6, 9, 0, 2, 0, 6, 0, 9)
        >>> bool((dropout_keep(np, 5, 0, 0.5, 6, 9, 1, 2, 2, 5, 3, 7) == full[1:2, 2:5, 3:7]).all())
        True
    """
    q0, q1 = j0 // 4, -(-j1 // 4)  # the groups of four columns the tile touches
    quads = -(-int(S) // 4)
    rows = (xp.arange(b0, b1, dtype=xp.uint64)[:, None] * xp.uint64(L)
            + xp.arange(i0, i1, dtype=xp.uint64)[None, :]) * xp.uint64(quads)
    counter = rows[:, :, None] + xp.arange(q0, q1, dtype=xp.uint64)[None, None, :] + xp.uint64(offset % _U64)
    words = xp.stack(philox4x32_10(xp, seed, counter), axis=-1)
    words = words.reshape(counter.shape[:2] + (4 * (q1 - q0),))[:, :, j0 - 4 * q0: j1 - 4 * q0]
    return words >= xp.uint64(dropout_threshold(p))


class PhiloxDraws:
    """The draws the tensor factories ask of a backend (``rand``, ``randn``, ``randint``,
    ``permutation``) from a Philox stream on ``self.xp``; state ``{"seed", "offset"}``.

    Example:
        >>> import numpy as np
        >>> from avila_ml.backends.philox import PhiloxDraws
        >>> g = PhiloxDraws(np, 0); state = g.get_state(); a = g.rand((3,), np.float32)
        >>> g.set_state(state); bool((g.rand((3,), np.float32) == a).all())
        True
    """

    def __init__(self, xp, seed: int):
        self.xp = xp
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self._seed = int(seed) % _U64
        self._offset = 0

    def get_state(self) -> dict:
        """``{"seed": s, "offset": o}``: the next draw starts at counter ``o`` of stream ``s``."""
        return {"seed": self._seed, "offset": self._offset}

    def set_state(self, state) -> None:
        if isinstance(state, dict):
            self._seed, self._offset = int(state["seed"]) % _U64, int(state["offset"])
        else:
            raise TypeError(f"set_rng_state: expected a dict with 'seed' and 'offset' (from get_rng_state), "
                            f"got {type(state).__name__}")

    def reserve(self, counters: int) -> tuple[int, int]:
        """``(seed, offset)`` for a consumer that draws ``counters`` Philox counters itself
        (fused dropout), advancing the offset past them, as PyTorch's ``philox_cuda_state``.

        Example:
            >>> import numpy as np
            >>> from avila_ml.backends.philox import PhiloxDraws
            >>> g = PhiloxDraws(np, 3); g.reserve(10), g.get_state()
            ((3, 0), {'seed': 3, 'offset': 10})
        """
        state = (self._seed, self._offset)
        self._offset += int(counters)
        return state

    def _words(self, n: int):
        out = philox_uint32(self.xp, self._seed, self._offset, n)
        self._offset += -(-int(n) // 4)
        return out

    def _uniform(self, n: int, np_dtype):
        xp = self.xp
        if np.dtype(np_dtype) == np.float64:  # 53 random bits from two words
            w = self._words(2 * n).reshape(n, 2).astype(xp.uint64)
            bits = ((w[:, 0] >> 5) << 26) | (w[:, 1] >> 6)
            return bits.astype(xp.float64) * (1.0 / (1 << 53))
        return (self._words(n) >> 8).astype(xp.float32) * np.float32(1.0 / (1 << 24))

    def rand(self, shape, np_dtype):
        """U[0, 1) samples (float32 from 24 bits, float64 from 53 bits; others via float32)."""
        n = math.prod(shape)
        work = np.float64 if np.dtype(np_dtype) == np.float64 else np.float32
        return self._uniform(n, work).reshape(shape).astype(np_dtype, copy=False)

    def randn(self, shape, np_dtype):
        """N(0, 1) samples by Box-Muller on pairs of uniforms."""
        xp = self.xp
        n = math.prod(shape)
        work = np.float64 if np.dtype(np_dtype) == np.float64 else np.float32
        pairs = -(-n // 2)
        u = self._uniform(2 * pairs, work).reshape(pairs, 2)
        radius = xp.sqrt(-2 * xp.log1p(-u[:, 0]))  # 1 - u in (0, 1]: log is finite
        angle = (2 * math.pi) * u[:, 1]
        z = xp.stack([radius * xp.cos(angle), radius * xp.sin(angle)], axis=1).reshape(-1)[:n]
        return z.reshape(shape).astype(np_dtype, copy=False)

    def randint(self, low, high, shape, np_dtype):
        """Integers in ``[low, high)``: ``low + (w * (high - low)) >> 32`` for ranges up to
        2**32 (bias below range / 2**32), a 64-bit word modulo the range beyond."""
        xp = self.xp
        n = math.prod(shape)
        span = int(high) - int(low)
        if span <= 1 << 32:
            w = self._words(n).astype(xp.uint64)
            r = (w * span) >> 32
        else:
            w = self._words(2 * n).reshape(n, 2).astype(xp.uint64)
            r = ((w[:, 0] << 32) | w[:, 1]) % xp.uint64(span)
        return (r.astype(xp.int64) + int(low)).reshape(shape).astype(np_dtype, copy=False)

    def permutation(self, n: int):
        """A uniform random permutation of ``0..n-1``: the argsort of 64-bit random keys."""
        xp = self.xp
        w = self._words(2 * n).reshape(n, 2).astype(xp.uint64)
        return xp.argsort((w[:, 0] << 32) | w[:, 1], kind="stable").astype(xp.int64)
