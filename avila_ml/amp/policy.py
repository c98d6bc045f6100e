"""The autocast op policy: which ops run in the low dtype, which in float32, which promote.

One table per device type, keyed by op name, as PyTorch's ``aten/src/ATen/autocast_mode.cpp``
lists them (names below are PyTorch's where PyTorch has the op; ``conv4d`` and
``conv_transpose4d`` are ours and follow their lower-dimensional siblings):

- ``lower``: tensors of float32 (not float64) are cast to the autocast dtype; the op runs there.
- ``fp32``: tensors of a 2-byte float dtype are cast to float32.
- ``promote``: all floating tensors are cast to the widest floating dtype among them
  (float64 ones are left as they are).
- ``banned``: the op raises under autocast (PyTorch bans ``binary_cross_entropy`` on CUDA).

The tables are consulted in two places, through :func:`avila_ml.amp.autocast_mode.policy_of`:
``Function.apply`` (ops that are one ``Function``, keyed by the class in
:data:`FUNCTION_OPS`) and the :func:`~avila_ml.amp.autocast_mode.autocast_op` decorator on
composite functional ops (``linear``, the losses, ...). Both do nothing unless an autocast
region is active, so the plain path pays one attribute read per op.
"""
from __future__ import annotations

__all__ = ["CPU", "CUDA", "FUNCTION_OPS", "policy_table"]

_CONV = ("conv1d", "conv2d", "conv3d", "conv4d", "conv_transpose1d", "conv_transpose2d",
         "conv_transpose3d", "conv_transpose4d", "convolution", "conv_transpose")

# PyTorch's CPU lists (lower_precision_fp / fp32 / promote), restricted to ops Avila ML has.
CPU = {
    "lower": {"matmul", "mm", "bmm", "baddbmm", "addmm", "linear", "einsum",
              "scaled_dot_product_attention", *_CONV},
    "fp32": {"prod", "avg_pool3d", "max_pool3d", "adaptive_avg_pool3d", "mse_loss", "l1_loss",
             "smooth_l1_loss", "huber_loss", "cross_entropy", "nll_loss", "binary_cross_entropy",
             "binary_cross_entropy_with_logits", "kl_div", "cosine_embedding_loss",
             # F.pad(mode="reflect" / "replicate") over 1, 2 (reflect) or 1-3 (replicate) dims
             "reflection_pad1d", "reflection_pad2d", "replication_pad1d", "replication_pad2d",
             "replication_pad3d"},
    "promote": {"cat", "stack"},
    "banned": set(),
}

# PyTorch's CUDA lists, restricted the same way.
CUDA = {
    "lower": {"matmul", "mm", "bmm", "baddbmm", "addmm", "linear", "einsum",
              "scaled_dot_product_attention", *_CONV},
    "fp32": {"exp", "expm1", "log", "log2", "log10", "log1p", "rsqrt", "reciprocal", "tan", "pow",
             "softplus", "layer_norm", "group_norm", "sum", "prod", "cumsum", "norm", "softmax",
             "log_softmax", "logsumexp", "mse_loss", "l1_loss", "smooth_l1_loss", "huber_loss",
             "cross_entropy", "nll_loss", "binary_cross_entropy_with_logits", "kl_div",
             "cosine_embedding_loss"},
    "promote": {"cat", "stack", "atan2", "addcmul", "addcdiv"},
    "banned": {"binary_cross_entropy"},
}

# Ops that are a single Function: the policy is applied in Function.apply, keyed by class
# (module-relative "module.Class" -> op name). Composite ops carry @autocast_op instead.
FUNCTION_OPS = {
    "linalg.MatMul": "matmul",
    "linalg.Einsum": "einsum",
    "conv.ConvNd": "convolution",
    "conv.ConvTransposeNd": "conv_transpose",
    "elementwise.Exp": "exp",
    "elementwise.Expm1": "expm1",
    "elementwise.Log": "log",
    "elementwise.Log2": "log2",
    "elementwise.Log10": "log10",
    "elementwise.Log1p": "log1p",
    "elementwise.Rsqrt": "rsqrt",
    "elementwise.Tan": "tan",
    "elementwise.Pow": "pow",
    "elementwise.PowScalar": "pow",
    "elementwise.RPowScalar": "pow",
    "elementwise.Atan2": "atan2",
    "activation.Softplus": "softplus",
    "reduction.Sum": "sum",
    "reduction.Prod": "prod",
    "reduction.CumSum": "cumsum",
    "reduction.Norm2": "norm",
    "reduction.Softmax": "softmax",
    "reduction.LogSoftmax": "log_softmax",
    "shape.Cat": "cat",
}


def policy_table(device_type: str) -> dict:
    """{op name: policy} for ``device_type`` ("cpu" or "cuda").

    Example:
        >>> from avila_ml.amp.policy import policy_table
        >>> policy_table("cpu")["linear"], policy_table("cpu")["mse_loss"], policy_table("cpu")["cat"]
        ('lower', 'fp32', 'promote')
    """
    lists = CPU if device_type == "cpu" else CUDA
    return {name: kind for kind, names in lists.items() for name in names}
