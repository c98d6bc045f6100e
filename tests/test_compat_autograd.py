"""Autograd compatibility with PyTorch: the same code runs with ``torch`` and with ``avila_ml``
(passed in as ``lib``), and values and gradients are compared in float64.

Covers in-place ops inside the graph, slice assignment (CopySlices), writes through views,
version-counter and leaf errors, views vs copies, PyTorch-style custom Functions (double
backward, mark_dirty, non-differentiable outputs), inference mode, hooks, anomaly detection,
a ResNet block written with ``relu_``/``+=``, and a Conv4d built from Conv3d calls that fill a
preallocated output frame by frame.
"""
import numpy as np
import pytest
import torch

import avila_ml as am

LIBS = (am, torch)


def _np(t):
    t = t.detach() if hasattr(t, "detach") else t
    return t.cpu().numpy() if hasattr(t, "cpu") else np.asarray(t)


def _ver(t):
    """The version counter's value (PyTorch: an int; Avila ML: a shared one-element list)."""
    return t._version if isinstance(t._version, int) else t._version[0]


def _leaf(lib, array, device="cpu"):
    kw = {"device": device} if lib is am else {}
    return lib.tensor(np.array(array, dtype=np.float64), requires_grad=True, **kw)


def _run_both(fn, *arrays, device="cpu"):
    """Run ``fn(lib, *leaves)`` with both libraries; compare outputs and leaf gradients."""
    results = {}
    for lib in LIBS:
        leaves = [_leaf(lib, a, device if lib is am else "cpu") for a in arrays]
        out = fn(lib, *leaves)
        loss = (out * out).sum() if out.ndim else out
        loss.backward()
        results[lib] = (_np(out), [None if x.grad is None else _np(x.grad) for x in leaves])
    (o_am, g_am), (o_t, g_t) = results[am], results[torch]
    np.testing.assert_allclose(o_am, o_t, rtol=1e-12, atol=1e-12)
    for a, b in zip(g_am, g_t):
        assert (a is None) == (b is None)
        if a is not None:
            np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


rng = np.random.default_rng(0)
X = rng.normal(size=(3, 4))
Y = rng.normal(size=(3, 2))
V = rng.normal(size=(4,))


# ------------------------------------------------------------------ slice assignment (CopySlices)
def _slice_assign(lib, x, y):
    out = lib.zeros(3, 4, dtype=lib.float64, device=x.device)
    out[:, 0:2] = y * 2
    out[:, 2:] = x[:, 1:3].exp()
    return out


def _add_into_rows(lib, x, y):
    out = lib.zeros(3, 4, dtype=lib.float64, device=x.device)
    for i in range(3):
        out[i] += x[i] * (i + 1)
    out[1, 2] = y[0, 0] * 5  # a single element
    return out


def _advanced_index_write(lib, x, y):
    out = x * 1
    out[[0, 2]] = y[0:2].sum(1, keepdim=True) * 3   # index_put_ with broadcasting
    out[out > 1.0] = 0.5                            # boolean mask write
    return out


def _through_views(lib, x, y):
    h = x * 1
    h.T[1] = y[:, 0]              # transpose view
    h.view(-1)[0:3].mul_(3)        # view of a contiguous tensor
    h.narrow(1, 2, 2).add_(y)      # narrow
    h[0].unsqueeze(0).squeeze(0).sub_(1)  # squeeze/unsqueeze of a select
    h[:, 3].clamp_(min=0.0)
    return h


def _copy_into_slice(lib, x, y):
    out = lib.zeros(3, 4, dtype=lib.float64, device=x.device)
    out[:, 1:3].copy_(y.sin())
    out[0].copy_(x[2])             # broadcast-free copy from a row
    return out * x


def _masked_fill_and_friends(lib, x, y):
    # each op on its own graph tensor: an op that saves its result (exp_, sigmoid_, ...)
    # followed by another in-place op raises in both libraries (tested below)
    ops = [
        lambda h: h.masked_fill_(x < 0, 0.25), lambda h: h.relu_(), lambda h: h.mul_(y.sum()),
        lambda h: h.sigmoid_(), lambda h: h.tanh_(), lambda h: h.add_(x, alpha=0.5),
        lambda h: h.sub_(y[0, 0]), lambda h: h.addcmul_(x, x, value=0.1),
        lambda h: h.addcdiv_(x, x * x + 1, value=-0.2), lambda h: h.lerp_(x.cos(), 0.3),
        lambda h: h.pow_(2), lambda h: h.abs_().sqrt_(), lambda h: h.exp_(),
        lambda h: h.abs_().add_(1).log_(), lambda h: h.neg_(), lambda h: h.clamp_(0.1, 3.0),
        lambda h: h.clamp_(min=y[1, 1]), lambda h: h.div_(2), lambda h: h.sin_(),
        lambda h: h.reciprocal_(), lambda h: h.square_(), lambda h: h.copy_(y[:, 1:2] * x),
        lambda h: h.index_add_(1, lib.tensor([0, 2], device=x.device), y),
        lambda h: h.scatter_add_(1, lib.tensor([[1, 0], [2, 2], [3, 1]], device=x.device), y),
        lambda h: h.scatter_(1, lib.tensor([[1, 0], [2, 3], [3, 1]], device=x.device), y),
        lambda h: h.mul_(3).add_(1).div_(y[0, 1]),
        lambda h: h.index_fill_(1, lib.tensor([0, 2], device=x.device), y[0, 0]), lambda h: h.index_fill_(0, lib.tensor([1], device=x.device), -2.0),
    ]
    total = x * 0
    for k, op in enumerate(ops):
        h = x * 2 + 0.1
        out = op(h)
        assert out is h
        total = total + h * (k + 1)
    return total


def _sibling_view_sees_write(lib, x, y):
    out = lib.zeros(3, 4, dtype=lib.float64, device=x.device)
    v = out[:, 0:2]           # made before the write, overlaps it
    out[:, 1] = y[:, 1] * 4   # write through another view of the same base
    return v * x[:, 0:2]


def _iadd_is_in_place(lib, x, y):
    h = x * 1
    alias = h
    row = h[1]
    h += 1
    h *= x
    h -= y.sum()
    h /= 2
    assert alias is h
    return h + row.sum()  # the view made before the writes sees them


def _write_value_requires_grad_into_plain(lib, x, y):
    buf = lib.ones(2, 4, dtype=lib.float64)
    buf[1] = x[0] * y[0, 0]
    return buf


def _fill_zero_on_graph(lib, x, y):
    h = x * y[0, 0]
    h[0].zero_()
    h[1].fill_(y[1, 1])  # a 0-d tensor value: its gradient is the sum
    return h


CASES = [_slice_assign, _add_into_rows, _advanced_index_write, _through_views, _copy_into_slice,
         _masked_fill_and_friends, _sibling_view_sees_write, _iadd_is_in_place,
         _write_value_requires_grad_into_plain, _fill_zero_on_graph]


@pytest.mark.parametrize("case", CASES, ids=[c.__name__.strip("_") for c in CASES])
def test_in_place_graph_matches_torch(case, device):
    _run_both(case, X, Y, device=device)


def test_conv_output_written_into_a_preallocated_slice(device):
    w = rng.normal(size=(2, 3, 3))
    x = rng.normal(size=(2, 3, 8))

    def fn(lib, w, x):
        out = lib.zeros(2, 5, 6, dtype=lib.float64, device=x.device)
        out[:, 0:2] = lib.nn.functional.conv1d(x, w)
        out[:, 3:5] += lib.nn.functional.conv1d(x * 2, w)
        return out

    _run_both(fn, w, x, device=device)


def test_in_place_activation_modules_and_functional(device):
    def fn(lib, x, y):
        h = x * 3
        lib.nn.ReLU(inplace=True)(h)
        g = lib.nn.functional.leaky_relu(h - 1, 0.1, inplace=True)
        k = x * 2
        out = lib.nn.functional.hardtanh(k, -0.5, 0.5, inplace=True)
        assert out is k
        return h * y.sum() + g * k

    _run_both(fn, X, Y, device=device)


# --------------------------------------------------------------------------------- errors
def _message(fn):
    """The message ``fn`` raises (RuntimeError), for both libraries."""
    msgs = {}
    for lib in LIBS:
        with pytest.raises(RuntimeError) as e:
            fn(lib)
        msgs[lib] = str(e.value)
    return msgs


@pytest.mark.parametrize("which", ["saved_output", "saved_input", "through_view"])
def test_version_counter_error_matches_torch(which):
    def fn(lib):
        x = lib.tensor([1.0, 2.0, 3.0], dtype=lib.float64, requires_grad=True)
        if which == "saved_output":
            y = x.exp()              # saves its output
            y.add_(1)
            y.sum().backward()
        elif which == "saved_input":
            a = x * 1
            y = (a * x).sum()        # saves a
            a.mul_(2)
            y.backward()
        else:
            y = x.sigmoid()
            s = y.sum()
            y[0:2].zero_()           # the view shares y's version counter
            s.backward()

    msgs = _message(fn)
    ours, theirs = msgs[am], msgs[torch]
    head = theirs.split(" is at version")[0].replace("torch.", "avila_ml.").replace("DoubleTensor", "DoubleTensor")
    assert ours.startswith(head.split("[")[0])
    for part in ("modified by an inplace operation", "is at version 1; expected version 0 instead"):
        assert part in theirs and part in ours
    # the producer is named as PyTorch names it
    if "which is output 0 of" in theirs:
        assert theirs.split("which is output 0 of ")[1].split(",")[0] in ours


@pytest.mark.parametrize("op", ["add_", "setitem", "view_add_", "iadd", "relu_inplace"])
def test_leaf_in_place_errors_match_torch(op):
    def fn(lib):
        x = lib.ones(2, 3, dtype=lib.float64, requires_grad=True)
        if op == "add_":
            x.add_(1)
        elif op == "setitem":
            x[0] = 2.0
        elif op == "view_add_":
            x.view(-1).add_(1)
        elif op == "iadd":
            x += 1
        else:
            lib.nn.functional.relu(x, inplace=True)

    msgs = _message(fn)
    expected = msgs[torch].strip()
    assert expected in msgs[am]


def test_multi_output_view_cannot_be_written_in_place():
    msgs = _message(lambda lib: lib.ones(4, 2, dtype=lib.float64, requires_grad=True).mul(2).split(2)[0].mul_(2))
    assert "is a view and is being modified inplace" in msgs[torch]
    assert "is a view and is being modified inplace" in msgs[am]
    assert "returns multiple views" in msgs[am]


def test_view_of_non_viewable_strides_raises_like_torch():
    msgs = _message(lambda lib: lib.zeros(3, 4).T.view(-1))
    assert msgs[torch] in msgs[am]


@pytest.mark.parametrize("make", [
    lambda t: t.view(6), lambda t: t.reshape(3, 2), lambda t: t.T, lambda t: t.transpose(0, 1),
    lambda t: t.permute(1, 0), lambda t: t[1], lambda t: t[:, 1:], lambda t: t.narrow(1, 0, 2),
    lambda t: t.unsqueeze(0), lambda t: t[None].squeeze(0), lambda t: t.split(1)[0],
    lambda t: t.chunk(2, 1)[1], lambda t: t.unbind(1)[2], lambda t: t.expand(4, 2, 3)[0],
    lambda t: t.view_as(t.new_empty(6) if hasattr(t, "new_empty") else t.reshape(6)),
    lambda t: t.flatten(), lambda t: t.T.reshape(6), lambda t: t.flip(0),
], ids=["view", "reshape", "T", "transpose", "permute", "select", "slice", "narrow", "unsqueeze",
        "squeeze", "split", "chunk", "unbind", "expand", "view_as", "flatten", "reshape_copy", "flip"])
def test_view_or_copy_as_torch(make):
    """A write into the base shows in the result exactly when PyTorch's result is a view; the
    version counter moves with it."""
    seen = {}
    for lib in LIBS:
        base = lib.arange(6.0).reshape(2, 3)
        r = make(base)
        before = _np(r).copy()
        v0 = _ver(r)
        base.add_(100)
        seen[lib] = (not np.array_equal(_np(r), before), _ver(r) != v0)
    assert seen[am] == seen[torch]


# ---------------------------------------------------------------- PyTorch-style Function
def _user_functions(lib):
    class CubeScale(lib.autograd.Function):
        """y = k x^3 (k a Python number); backward written with Tensor ops."""

        @staticmethod
        def forward(ctx, x, k):
            ctx.save_for_backward(x)
            ctx.k = k
            return x ** 3 * k

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            assert ctx.needs_input_grad == (True, False)
            return g * 3 * ctx.k * x ** 2, None

    class ExpOut(lib.autograd.Function):
        """Saves its output (the backward of exp reuses it)."""

        @staticmethod
        def forward(ctx, x):
            y = x.exp()
            ctx.save_for_backward(y)
            return y

        @staticmethod
        def backward(ctx, g):
            (y,) = ctx.saved_tensors
            return g * y

    class SortWithIndex(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            idx = lib.argsort(x, dim=-1) if hasattr(lib, "argsort") else None
            if idx is None:
                idx = lib.tensor(np.argsort(x.detach().numpy(), axis=-1))
            v = lib.gather(x, -1, idx)
            ctx.mark_non_differentiable(idx)
            ctx.save_for_backward(idx)
            ctx.set_materialize_grads(False)
            return v, idx

        @staticmethod
        def backward(ctx, gv, gidx):
            assert gidx is None  # materialize_grads off: no zeros for the index output
            (idx,) = ctx.saved_tensors
            return lib.zeros_like(gv).scatter_add(-1, idx, gv)

    class MulTwoInPlace(lib.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            x.mul_(2)
            ctx.mark_dirty(x)
            return x

        @staticmethod
        def backward(ctx, g):
            return g * 2

    return CubeScale, ExpOut, SortWithIndex, MulTwoInPlace


def test_user_function_double_backward_matches_torch(device):
    x0 = np.array([0.5, -1.5, 2.0])
    res = {}
    for lib in LIBS:
        CubeScale, ExpOut, _, _ = _user_functions(lib)
        x = _leaf(lib, x0, device if lib is am else "cpu")
        y = ExpOut.apply(CubeScale.apply(x, 0.5) * 0.3)   # composes with built-in ops
        (g,) = lib.autograd.grad(y.sum(), x, create_graph=True)
        (gg,) = lib.autograd.grad((g * g).sum(), x)
        res[lib] = (_np(y), _np(g), _np(gg), type(y.grad_fn).__name__)
    for a, b in zip(res[am][:3], res[torch][:3]):
        np.testing.assert_allclose(a, b, rtol=1e-12)
    assert res[am][3] == res[torch][3] == "ExpOutBackward"


def test_user_function_gradcheck_and_gradgradcheck():
    CubeScale, ExpOut, _, _ = _user_functions(am)
    x = am.tensor([0.3, -0.7, 1.1], dtype=am.float64, requires_grad=True)
    assert am.autograd.gradcheck(lambda t: ExpOut.apply(CubeScale.apply(t, 0.7)), (x,))
    assert am.autograd.gradgradcheck(lambda t: ExpOut.apply(CubeScale.apply(t, 0.7)), (x,))


def test_user_function_non_differentiable_output_and_dirty_input():
    x0 = np.array([[3.0, 1.0, 2.0], [0.5, -1.0, 4.0]])
    res = {}
    for lib in LIBS:
        _, _, SortWithIndex, MulTwoInPlace = _user_functions(lib)
        x = _leaf(lib, x0)
        v, idx = SortWithIndex.apply(x * 1)
        assert not idx.requires_grad and v.requires_grad
        h = x * 1
        out = MulTwoInPlace.apply(h)
        assert out is h  # the dirty input is returned, with new history
        ((v * lib.arange(3.0, dtype=lib.float64)).sum() + (out ** 2).sum()).backward()
        res[lib] = (_np(v), _np(idx), _np(x.grad))
    for a, b in zip(res[am], res[torch]):
        np.testing.assert_allclose(a, b, rtol=1e-12)


def test_once_differentiable_refuses_a_second_derivative():
    for lib in LIBS:
        class Sq(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                ctx.save_for_backward(x)
                return x * x

            @staticmethod
            @lib.autograd.function.once_differentiable
            def backward(ctx, g):
                (x,) = ctx.saved_tensors
                return 2 * x * g

        x = _leaf(lib, [1.0, 2.0])
        v = _leaf(lib, [1.0, 1.0])  # a grad_output that requires grad: g depends on it
        (g,) = lib.autograd.grad(Sq.apply(x), x, grad_outputs=v, create_graph=True)
        np.testing.assert_allclose(_np(g), [2.0, 4.0])
        with pytest.raises(RuntimeError, match="trying to differentiate twice a function that was marked with @once_differentiable"):
            g.sum().backward()
        # with a plain grad_output the result has no graph at all, in both libraries
        (g,) = lib.autograd.grad(Sq.apply(x).sum(), x, create_graph=True)
        assert not g.requires_grad


def test_user_function_in_place_on_leaf_and_wrong_grad_count():
    msgs = {}
    for lib in LIBS:
        _, _, _, MulTwoInPlace = _user_functions(lib)
        with pytest.raises(RuntimeError) as e:
            MulTwoInPlace.apply(_leaf(lib, [1.0]))
        msgs[lib] = str(e.value)

        class TooMany(lib.autograd.Function):
            @staticmethod
            def forward(ctx, x):
                return x * 1

            @staticmethod
            def backward(ctx, g):
                return g, g

        with pytest.raises(RuntimeError, match="incorrect number of gradients"):
            TooMany.apply(_leaf(lib, [1.0])).sum().backward()
    assert "leaf Variable that requires grad" in msgs[torch] and "leaf Variable that requires grad" in msgs[am]


# -------------------------------------------------------------- modes, hooks, anomaly
def test_inference_mode_like_torch():
    for lib in LIBS:
        w = _leaf(lib, [1.0, 2.0])
        with lib.inference_mode():
            assert lib.is_inference_mode_enabled() and not lib.is_grad_enabled()
            y = w * 2
            z = lib.ones(2, dtype=lib.float64)
        assert not lib.is_inference_mode_enabled() and lib.is_grad_enabled()
        assert y.is_inference() and z.is_inference() and not y.requires_grad
        assert not w.is_inference()
        with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
            (w * y).sum()
        np.testing.assert_allclose(_np((w + z).sum()), 5.0)  # an op that saves nothing is fine
        with pytest.raises(RuntimeError, match="Inplace update to inference tensor outside InferenceMode"):
            z.add_(1)

        @lib.inference_mode()
        def f(t):
            return t * 3

        assert f(w).is_inference()
        with lib.inference_mode(False):
            assert not (w * 1).is_inference()


def test_post_accumulate_grad_hook_like_torch():
    for lib in LIBS:
        w = _leaf(lib, [1.0, 2.0])
        seen = []
        h = w.register_post_accumulate_grad_hook(lambda p: seen.append(_np(p.grad).copy()))
        (w * 3).sum().backward()
        (w * w).sum().backward()
        h.remove()
        (w * 1).sum().backward()
        np.testing.assert_allclose(seen, [[3.0, 3.0], [5.0, 7.0]])
        with pytest.raises(RuntimeError, match="non-leaf"):
            (w * 2).register_post_accumulate_grad_hook(lambda p: None)


def test_detect_anomaly_names_the_backward_that_made_nan():
    lines = {}
    for lib in LIBS:
        x = _leaf(lib, [0.0, 1.0])
        with pytest.warns(UserWarning if lib is torch else RuntimeWarning):
            with lib.autograd.detect_anomaly():
                y = (lib.sqrt(x) * 0.0).sum()
                with pytest.raises(RuntimeError) as e:
                    y.backward()
        lines[lib] = str(e.value).splitlines()[0]
    assert lines[am] == lines[torch] == "Function 'SqrtBackward0' returned nan values in its 0th output."
    assert not am.autograd.is_anomaly_enabled()


def test_set_detect_anomaly_reports_the_forward_traceback():
    x = am.tensor([0.0], dtype=am.float64, requires_grad=True)
    am.autograd.set_detect_anomaly(True)
    try:
        y = am.log(x) * 0.0  # a line this test can find in the report
        with pytest.raises(RuntimeError, match=r"(?s)LogBackward0' returned nan.*am\.log\(x\) \* 0\.0"):
            y.sum().backward()
    finally:
        am.autograd.set_detect_anomaly(False)


# ------------------------------------------------------------------ a ResNet block
def _resnet_block(lib, params):
    nn, F = lib.nn, lib.nn.functional

    class BasicBlock(nn.Module):
        def __init__(self, c):
            super().__init__()
            self.conv1 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(c)
            self.conv2 = nn.Conv2d(c, c, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(c)
            self.relu = nn.ReLU(inplace=True)

        def forward(self, x):
            identity = x
            out = self.conv1(x)
            out = self.bn1(out)
            out = self.relu(out)
            out = self.conv2(out)
            out = self.bn2(out)
            out += identity
            out.relu_()
            return out

    block = BasicBlock(params["conv1.weight"].shape[0]).double()
    with lib.no_grad():
        for name, p in block.named_parameters():
            p.copy_(lib.tensor(params[name]))
    return block


def test_resnet_block_with_relu_and_iadd_matches_torch():
    r = np.random.RandomState(3)
    c = 3
    params = {"conv1.weight": r.normal(0, 0.3, (c, c, 3, 3)), "conv2.weight": r.normal(0, 0.3, (c, c, 3, 3)),
              "bn1.weight": r.uniform(0.5, 1.5, c), "bn1.bias": r.normal(0, 0.1, c),
              "bn2.weight": r.uniform(0.5, 1.5, c), "bn2.bias": r.normal(0, 0.1, c)}
    x0 = r.normal(size=(2, c, 5, 5))
    res = {}
    for lib in LIBS:
        block = _resnet_block(lib, params)
        x = lib.tensor(x0, requires_grad=True)
        h = x * 1  # the block's input is a graph tensor, as inside a network
        out = block(h)
        loss = (out * out).mean()
        loss.backward()
        res[lib] = [_np(out), _np(x.grad)] + [_np(p.grad) for _, p in block.named_parameters()]
    for a, b in zip(res[am], res[torch]):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# ------------------------------------------------------------------ Conv4d from Conv3d frames
def _conv4d_module(lib):
    nn = lib.nn

    class Conv4d(nn.Module):
        """A 4-d convolution as public repositories write it: one Conv3d per kernel frame,
        summed into a preallocated output, frame by frame (no padding, stride 1)."""

        def __init__(self, cin, cout, k):
            super().__init__()
            self.k, self.cout = k, cout
            self.conv3d_layers = nn.ModuleList([nn.Conv3d(cin, cout, k, bias=(i == 0)) for i in range(k)])

        def forward(self, x):
            b, _, l, d, h, w = x.shape
            k = self.k
            lo = l - k + 1
            out = lib.zeros(b, self.cout, lo, d - k + 1, h - k + 1, w - k + 1, dtype=x.dtype)
            for i in range(k):
                for j in range(lo):
                    out[:, :, j] += self.conv3d_layers[i](x[:, :, j + i])
            return out

    return Conv4d


def _conv4d_weights(seed, cin, cout, k):
    r = np.random.RandomState(seed)
    ws = [r.normal(0, 0.2, (cout, cin, k, k, k)) for _ in range(k)]
    return ws, r.normal(0, 0.1, cout)


def test_conv4d_from_conv3d_frames_gets_torch_gradients_and_matches_native_conv4d():
    cin, cout, k = 2, 3, 2
    ws, b = _conv4d_weights(0, cin, cout, k)
    x0 = np.random.RandomState(1).normal(size=(2, cin, 4, 3, 4, 3))
    res = {}
    for lib in LIBS:
        m = _conv4d_module(lib)(cin, cout, k).double()
        with lib.no_grad():
            for i, conv in enumerate(m.conv3d_layers):
                conv.weight.copy_(lib.tensor(ws[i]))
            m.conv3d_layers[0].bias.copy_(lib.tensor(b))
        x = lib.tensor(x0, requires_grad=True)
        y = m(x)
        (y.sin().sum()).backward()
        res[lib] = [_np(y), _np(x.grad), _np(m.conv3d_layers[0].bias.grad)] + [_np(c.weight.grad) for c in m.conv3d_layers]
    for a, b_ in zip(res[am], res[torch]):
        np.testing.assert_allclose(a, b_, rtol=1e-10, atol=1e-12)
    # the same numbers as Avila ML's native conv4d (weights stacked along the time axis)
    w4 = am.tensor(np.stack(ws, axis=2), requires_grad=True)
    xa = am.tensor(x0, requires_grad=True)
    y4 = am.nn.functional.conv4d(xa, w4, am.tensor(b))
    y4.sin().sum().backward()
    np.testing.assert_allclose(_np(y4), res[am][0], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(_np(xa.grad), res[am][1], rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.moveaxis(_np(w4.grad), 2, 0), np.stack(res[am][3:]), rtol=1e-10, atol=1e-12)


def test_conv4d_from_conv3d_frames_trains():
    cin, cout, k = 1, 2, 2
    ws, b = _conv4d_weights(2, cin, cout, k)
    r = np.random.RandomState(4)
    x0 = r.normal(size=(3, cin, 3, 3, 3, 3))
    target = r.normal(size=(3, cout, 2, 2, 2, 2))
    losses = {}
    for lib in LIBS:
        m = _conv4d_module(lib)(cin, cout, k).double()
        with lib.no_grad():
            for i, conv in enumerate(m.conv3d_layers):
                conv.weight.copy_(lib.tensor(ws[i]))
            m.conv3d_layers[0].bias.copy_(lib.tensor(b))
        opt = lib.optim.SGD(m.parameters(), lr=0.1)
        x, t = lib.tensor(x0), lib.tensor(target)
        hist = []
        for _ in range(5):
            opt.zero_grad()
            loss = ((m(x) - t) ** 2).mean()
            loss.backward()
            assert all(c.weight.grad is not None and float(c.weight.grad.abs().sum()) > 0 for c in m.conv3d_layers)
            opt.step()
            hist.append(loss.item())
        losses[lib] = hist
    assert losses[am][-1] < losses[am][0] * 0.9
    np.testing.assert_allclose(losses[am], losses[torch], rtol=1e-10)


# ------------------------------------------------------------ in-place shape ops and random fills
def test_in_place_shape_ops_match_torch():
    def fn(lib, x, y):
        h = x * 1
        h.t_()
        h.unsqueeze_(0)
        h.squeeze_(0)
        h.transpose_(0, 1)
        h.mul_(x[0] + 1)
        return h

    _run_both(fn, X, Y)
    for lib in LIBS:
        with pytest.raises(RuntimeError, match="leaf Variable that requires grad"):
            _leaf(lib, X).t_()


@pytest.mark.parametrize("fill", ["uniform_", "normal_", "bernoulli_", "exponential_", "random_"])
def test_random_fill_on_a_graph_tensor_blocks_the_old_value_gradient(fill):
    grads = {}
    for lib in LIBS:
        x = _leaf(lib, X)
        h = x * 2
        getattr(h[0], fill)()            # through a view: the base gets CopySlices
        assert h.grad_fn is not None
        (h[1:] ** 2).sum().backward()
        grads[lib] = _np(x.grad)
    np.testing.assert_allclose(grads[am], grads[torch], rtol=1e-12)
    assert not grads[am][0].any()


def test_random_fills_have_torch_semantics():
    am.manual_seed(0)
    b = am.empty(20000, dtype=am.float64).bernoulli_(am.full((20000,), 0.3, dtype=am.float64))
    assert set(np.unique(_np(b))) <= {0.0, 1.0} and abs(_np(b).mean() - 0.3) < 0.02
    e = am.empty(20000, dtype=am.float64).exponential_(4.0)
    assert _np(e).min() >= 0 and abs(_np(e).mean() - 0.25) < 0.01
    r = am.empty(2000, dtype=am.float32).random_(5)
    assert set(np.unique(_np(r))) == {0.0, 1.0, 2.0, 3.0, 4.0}
    with pytest.raises(RuntimeError, match="from=.*to="):
        am.empty(3).random_(4, 2)


def test_copy_slices_gradcheck_and_gradgradcheck():
    """Finite differences through CopySlices, index_put and in-place ops, to second order."""
    def f(x, y):
        out = am.zeros(3, 4, dtype=am.float64)
        out[:, 1:3] = x[:, :2] * y
        out[0] += y[:, 0].sum()
        out[[1, 2], 0] = x[0, 3] * y[1, 1]
        h = out.T
        h[2].mul_(x[1, :3])
        v = out.view(-1)
        v[5:9].exp_()
        return out.sin()

    x = am.tensor(rng.normal(size=(3, 4)) * 0.5, dtype=am.float64, requires_grad=True)
    y = am.tensor(rng.normal(size=(3, 2)) * 0.5, dtype=am.float64, requires_grad=True)
    assert am.autograd.gradcheck(f, (x, y))
    assert am.autograd.gradgradcheck(f, (x, y))


def test_backward_from_a_view_made_before_a_write_into_its_base():
    grads = {}
    for lib in LIBS:
        y = _leaf(lib, [1.0, 2.0])
        out = lib.zeros(2, 3, dtype=lib.float64)
        v = out[:, 0:2]
        out[:, 1] = y * 4
        v.sum().backward()  # v is the root: its history is re-derived from the written base
        grads[lib] = _np(y.grad)
    np.testing.assert_allclose(grads[am], grads[torch])


def test_retain_grad_follows_an_in_place_op():
    grads = {}
    for lib in LIBS:
        x = _leaf(lib, [1.0, -2.0])
        y = x * 2
        y.retain_grad()
        y.mul_(3)
        (y * y).sum().backward()
        grads[lib] = (_np(y.grad), _np(x.grad))
    for a, b in zip(grads[am], grads[torch]):
        np.testing.assert_allclose(a, b)
