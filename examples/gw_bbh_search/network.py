"""The 1-D CNN of Gabbard et al. (2018) at 2048 Hz, as re-implemented by Schafer et al. (2021),
in Avila ML; its unbounded ranking statistic; and sliding it over a long stretch cheaply.

Layers (input: 1 detector x 2048 samples; shapes after each block)::

    Conv1d(1->8, 64) ELU                      8 x 1985
    Conv1d(8->8, 32) MaxPool1d(4) ELU         8 x 488
    Conv1d(8->16, 32) ELU                    16 x 457
    Conv1d(16->16, 16) MaxPool1d(3) ELU      16 x 147
    Conv1d(16->32, 16) ELU                   32 x 132
    Conv1d(32->32, 16) MaxPool1d(2) ELU      32 x 58
    Flatten  Linear(1856->64) Dropout ELU  Linear(64->64) Dropout ELU  Linear(64->2)

The references end in a softmax and train with cross-entropy; here the network returns the two
logits ``(noise, signal)`` and training uses ``CrossEntropyLoss`` (softmax + log-likelihood in
one numerically stable step, the same objective). The references' first layer, a BatchNorm1d
on the input, is left out: the input is whitened to unit variance already.

Ranking statistic, "unbounded softmax replacement" (USR, Schafer et al. 2021): the softmax
signal probability ``p = 1 / (1 + exp(l_noise - l_signal))`` rounds to exactly 1.0 in float32
once ``l_signal - l_noise > ~17``, so every loud window ties and low false-alarm rates cannot be
resolved. The statistic used here is the logit difference ``l_signal - l_noise``, a monotonic
function of ``p`` where ``p`` is resolvable, and unbounded.

Sliding: all layers before Flatten are convolutions and poolings, and the poolings multiply to
a stride of 4 * 3 * 2 = 24 samples. For windows starting at multiples of 24 samples the
feature map of a long stretch, cut at ``start / 24`` for 58 columns, equals the feature map
of the window alone, so the convolutions run once over the stretch (not once per window,
10x less work at a ~0.1 s step) and only the dense layers run per window.
"""
from __future__ import annotations

import numpy as np

import avila_ml as am
from avila_ml import nn

POOL_STRIDE = 4 * 3 * 2
FEATURE_LEN = 58


class GabbardNet(nn.Module):
    """Gabbard et al. (2018) / Schafer et al. (2021) binary classifier for 1 s of whitened strain.

    ``forward(x)`` takes (N, channels, 2048) and returns logits (N, 2): column 0 noise,
    column 1 signal. ``dropout`` is the dropout probability after each dense layer.
    (PyTorch: the ``nn.Sequential`` of gwastro/ml-training-strategies ``Pytorch/network.py``.)

    >>> import avila_ml as am
    >>> net = GabbardNet()
    >>> x = am.randn(3, 1, 2048)
    >>> tuple(net.features(x).shape), tuple(net(x).shape)
    ((3, 32, 58), (3, 2))
    """

    def __init__(self, channels: int = 1, dropout: float = 0.5):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv1d(channels, 8, 64), nn.ELU(),
            nn.Conv1d(8, 8, 32), nn.MaxPool1d(4), nn.ELU(),
            nn.Conv1d(8, 16, 32), nn.ELU(),
            nn.Conv1d(16, 16, 16), nn.MaxPool1d(3), nn.ELU(),
            nn.Conv1d(16, 32, 16), nn.ELU(),
            nn.Conv1d(32, 32, 16), nn.MaxPool1d(2), nn.ELU(),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Linear(32 * FEATURE_LEN, 64), nn.Dropout(dropout), nn.ELU(),
            nn.Linear(64, 64), nn.Dropout(dropout), nn.ELU(),
            nn.Linear(64, 2),
        )

    def forward(self, x):
        return self.classifier(self.features(x))


def usr(logits) -> np.ndarray:
    """Unbounded softmax replacement: ``logit_signal - logit_noise`` per row, as float64 NumPy.

    >>> import avila_ml as am
    >>> usr(am.tensor([[0.0, 30.0], [1.0, -1.0]])).tolist()     # softmax would give 1.0 and 0.12
    [30.0, -2.0]
    """
    a = logits.detach().cpu().numpy().astype(np.float64) if hasattr(logits, "detach") else np.asarray(logits)
    return a[:, 1] - a[:, 0]


def window_stats(net: GabbardNet, windows: np.ndarray, batch: int = 256, device: str = "cpu") -> np.ndarray:
    """USR statistic of each window of ``windows`` (n, 2048), evaluated in batches, eval mode.

    >>> import numpy as np
    >>> window_stats(GabbardNet(), np.zeros((5, 2048), np.float32)).shape
    (5,)
    """
    net.eval()
    out = []
    with am.no_grad():
        for i in range(0, len(windows), batch):
            x = am.tensor(np.ascontiguousarray(windows[i:i + batch, None, :], np.float32), device=device)
            out.append(usr(net(x)))
    return np.concatenate(out) if out else np.zeros(0)


def slide(net: GabbardNet, stretch: np.ndarray, step: int, windows_per_chunk: int = 512, device: str = "cpu",
          progress=None) -> np.ndarray:
    """USR statistic of every 2048-sample window of ``stretch`` starting at ``0, step, 2 step, ...``.

    ``step`` must be a multiple of 24 (the pooling stride) so the convolutions can run once per
    chunk of ``windows_per_chunk`` windows instead of once per window (module docstring).
    Returns float64 (n_windows,).

    >>> import numpy as np
    >>> net, x = GabbardNet(), np.random.default_rng(0).standard_normal(2048 + 192 * 9).astype(np.float32)
    >>> by_window = window_stats(net, np.stack([x[s:s + 2048] for s in range(0, 192 * 10, 192)]))
    >>> np.allclose(slide(net, x, 192, windows_per_chunk=4), by_window, atol=1e-4)
    True
    """
    if step % POOL_STRIDE:
        raise ValueError(f"slide: step must be a multiple of {POOL_STRIDE} samples, got {step}")
    n_win = (len(stretch) - 2048) // step + 1
    net.eval()
    out = np.empty(n_win)
    cols = np.arange(FEATURE_LEN)
    chunks = range(0, n_win, windows_per_chunk)
    for c in (progress(chunks) if progress else chunks):
        m = min(windows_per_chunk, n_win - c)
        seg = stretch[c * step: c * step + (m - 1) * step + 2048]
        with am.no_grad():
            x = am.tensor(np.ascontiguousarray(seg[None, None, :], np.float32), device=device)
            feat = net.features(x)                                  # (1, 32, L')
            idx = (np.arange(m) * (step // POOL_STRIDE))[:, None] + cols[None, :]   # (m, 58)
            f = feat[0][:, am.tensor(idx.reshape(-1), device=device)]              # (32, m * 58)
            f = f.reshape(32, m, FEATURE_LEN).permute(1, 0, 2)                      # (m, 32, 58)
            out[c:c + m] = usr(net.classifier(f.contiguous()))
    return out
