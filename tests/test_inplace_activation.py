"""In-place ReLU written into the input's own memory (``relu_``, ``F.relu(inplace=True)``,
``nn.ReLU(inplace=True)``, ``F.relu_``): no new result array, PyTorch's autograd semantics
(version bump, the saved-tensor check, leaf and view refusals, views of the modified tensor,
double backward), values and gradients against PyTorch in float64 and bit for bit in float32.
"""
import numpy as np
import pytest
import torch

import avila_ml as am

F = am.nn.functional
TF = torch.nn.functional

# the three spellings of an in-place ReLU, for both libraries
FORMS = {
    "method": lambda lib, h: h.relu_(),
    "functional": lambda lib, h: lib.nn.functional.relu(h, inplace=True),
    "functional_": lambda lib, h: lib.nn.functional.relu_(h),
    "module": lambda lib, h: lib.nn.ReLU(inplace=True)(h),
}


def _np(t):
    return t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else t.detach().numpy()


def _ver(t):
    return t._version if isinstance(t._version, int) else t._version[0]


def _specials(shape, dtype, seed=0):
    a = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    flat = a.reshape(-1)
    flat[:6] = [np.nan, 0.0, -0.0, np.inf, -np.inf, -np.nan]
    return a


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("shape", [(3, 4), (7, 300, 130), ()], ids=["small", "split", "0d"])
def test_writes_into_the_input_buffer_and_matches_torch(form, shape):
    """The result is the input tensor, its array is the same object (nothing allocated for the
    result, nothing copied back), the version moves by one, and values and gradients are
    PyTorch's bit for bit (float32, NaN/+-0/inf inputs; 7 x 300 x 130 takes the batch split)."""
    a = _specials(shape, np.float32) if shape else np.array(-1.5, np.float32)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    out = {}
    for lib in (am, torch):
        x = lib.tensor(a.copy(), requires_grad=True)
        h = x * 1
        arr = h.array if lib is am else h.data_ptr()
        v0 = _ver(h)
        r = FORMS[form](lib, h)
        assert r is h and _ver(h) == v0 + 1
        if lib is am:
            assert h.array is arr
        h.backward(lib.tensor(g))
        out[lib] = (_np(h), _np(x.grad))
    np.testing.assert_array_equal(out[am][0], out[torch][0])
    np.testing.assert_array_equal(out[am][1], out[torch][1])


@pytest.mark.parametrize("form", list(FORMS))
def test_without_autograd_writes_in_place(form):
    """No graph (plain tensor, or a leaf under no_grad): the same buffer is written and the
    version still moves, as PyTorch's."""
    a = _specials((5, 6), np.float64)
    for lib in (am, torch):
        t = lib.tensor(a.copy())
        arr = t.array if lib is am else None
        FORMS[form](lib, t)
        assert _ver(t) == 1
        if lib is am:
            assert t.array is arr
            np.testing.assert_array_equal(t.numpy(), torch.relu(torch.tensor(a)).numpy())
    for lib in (am, torch):
        leaf = lib.tensor(a.copy(), requires_grad=True)
        with lib.no_grad():
            FORMS[form](lib, leaf)
        assert _ver(leaf) == 1 and leaf.grad_fn is None and leaf.requires_grad
        np.testing.assert_array_equal(_np(leaf), np.where(a > 0, a, 0) + np.where(np.isnan(a), a, 0))


def test_integer_tensor_in_place_like_torch():
    for lib in (am, torch):
        t = lib.tensor([-2, 0, 3])
        t.relu_()
        assert t.tolist() == [0, 0, 3]


def _messages(fn):
    msgs = {}
    for lib in (am, torch):
        with pytest.raises(RuntimeError) as e:
            fn(lib)
        msgs[lib] = str(e.value)
    return msgs


@pytest.mark.parametrize("form", list(FORMS))
def test_saved_input_modified_raises_like_torch(form):
    """A node that saved the tensor before the in-place ReLU refuses its backward."""
    def fn(lib):
        x = lib.tensor([1.0, -2.0, 3.0], dtype=lib.float64, requires_grad=True)
        a = x * 1
        y = (a * a).sum()      # saves a
        FORMS[form](lib, a)
        y.backward()
    msgs = _messages(fn)
    for part in ("modified by an inplace operation", "is at version 1; expected version 0 instead"):
        assert part in msgs[torch] and part in msgs[am]


def test_saved_output_modified_after_relu_raises_like_torch():
    """The ReLU's own saved output is the tensor's memory: a later in-place write to it is
    detected at the ReLU's backward (version 2, expected 1), as in PyTorch."""
    def fn(lib):
        x = lib.tensor([1.0, -2.0, 3.0], dtype=lib.float64, requires_grad=True)
        h = x * 1
        h.relu_()
        h.mul_(2)
        h.sum().backward()
    msgs = _messages(fn)
    for part in ("modified by an inplace operation", "is at version 2; expected version 1 instead"):
        assert part in msgs[torch] and part in msgs[am]


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("target", ["leaf", "view_of_leaf"])
def test_leaf_refusals_match_torch_and_write_nothing(form, target):
    keep = {}

    def fn(lib):
        x = lib.tensor([[1.0, -2.0], [-3.0, 4.0]], dtype=lib.float64, requires_grad=True)
        keep[lib] = x
        FORMS[form](lib, x if target == "leaf" else x[0])
    msgs = _messages(fn)
    assert msgs[torch].strip() in msgs[am]
    np.testing.assert_array_equal(keep[am].detach().numpy(), [[1.0, -2.0], [-3.0, 4.0]])


def test_expanded_tensor_refused_before_writing():
    """Elements sharing memory (an expanded view): PyTorch's error, raised before any write."""
    msgs = {}
    for lib in (am, torch):
        base = lib.tensor([[-1.0, 2.0]])
        with pytest.raises(RuntimeError) as e:
            base.expand(3, 2).relu_()
        msgs[lib] = str(e.value)
        assert base.tolist() == [[-1.0, 2.0]]
    assert "more than one element of the written-to tensor refers to a single memory location" in msgs[am]
    assert "more than one element of the written-to tensor refers to a single memory location" in msgs[torch]


@pytest.mark.parametrize("form", list(FORMS))
def test_relu_of_a_view_and_views_of_the_result_match_torch(form):
    """ReLU written through a view of a non-leaf (the base takes CopySlices), an older view of the
    base seeing the new values, and a view taken after: values and all gradients as PyTorch's
    (float64)."""
    a = np.random.default_rng(2).standard_normal((4, 5))
    w = np.random.default_rng(3).standard_normal((4, 5))
    res = {}
    for lib in (am, torch):
        x = lib.tensor(a, requires_grad=True)
        h = x * 2
        old_view = h[1:3]                 # made before the write
        r = FORMS[form](lib, h[:, 1:4])   # written through a view
        later = h.t()                      # made after
        loss = (h * lib.tensor(w)).sum() + (old_view ** 2).sum() + (r * 3).sum() + later[0].sum()
        loss.backward()
        res[lib] = [_np(h), _np(old_view), _np(r), _np(x.grad)]
    for ours, theirs in zip(res[am], res[torch]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-13, atol=1e-13)


def test_resnet_tail_in_place_chain_matches_torch():
    """``out += identity; out.relu_()`` after a ReLU(inplace) of a batch-norm output, as the
    residual CNN's block: float64 values and gradients of every leaf."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal((4, 3, 5, 5))
    res = {}
    for lib in (am, torch):
        x = lib.tensor(a, requires_grad=True)
        bn = lib.nn.BatchNorm2d(3).double()
        out = lib.nn.ReLU(inplace=True)(bn(x * 1.5))
        out = out * 0.5
        out += x
        y = out.relu_()
        (y * y).sum().backward()
        res[lib] = [_np(y), _np(x.grad), _np(bn.weight.grad), _np(bn.bias.grad)]
    for ours, theirs in zip(res[am], res[torch]):
        np.testing.assert_allclose(ours, theirs, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("form", list(FORMS))
@pytest.mark.parametrize("graph", [True, False])
def test_no_result_array_is_allocated(form, graph):
    """The write goes straight into the input (no result array, no copy back): the traced peak
    during the call stays far below one array (4 MiB), with and without a recorded graph.
    (NumPy reports its data buffers to tracemalloc.)"""
    import tracemalloc
    x = am.randn(64, 64, 256, requires_grad=graph)
    h = x * 1 if graph else x
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        FORMS[form](am, h)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < h.array.nbytes // 8, (peak - base, h.array.nbytes)
    assert float(h.min()) >= 0


# ------------------------------------------------------------------ LeakyReLU, Hardtanh, ReLU6
OTHERS = {
    "leaky_0.2": (lambda F_, h: F_.leaky_relu(h, 0.2, inplace=True), lambda t: TF.leaky_relu(t, 0.2)),
    "leaky_0": (lambda F_, h: F_.leaky_relu(h, 0.0, inplace=True), lambda t: TF.leaky_relu(t, 0.0)),
    "leaky_1.5": (lambda F_, h: F_.leaky_relu(h, 1.5, inplace=True), lambda t: TF.leaky_relu(t, 1.5)),
    "hardtanh": (lambda F_, h: F_.hardtanh(h, -0.5, 0.7, inplace=True), lambda t: TF.hardtanh(t, -0.5, 0.7)),
    "relu6": (lambda F_, h: F_.relu6(h, inplace=True), TF.relu6),
    "module_leaky": (lambda F_, h: am.nn.LeakyReLU(0.2, inplace=True)(h), lambda t: TF.leaky_relu(t, 0.2)),
}


@pytest.mark.parametrize("name", list(OTHERS))
@pytest.mark.parametrize("layout", ["small", "large", "transposed"])
def test_other_in_place_activations_write_into_the_input_and_match_torch(name, layout):
    """In place into the input's array (the oneDNN forward of LeakyReLU included, large and
    contiguous; a transposed view takes the NumPy path): values and gradients bit for bit
    PyTorch's out-of-place op (float32, NaN/+-0/inf inputs; hardtanh without NaN, where PyTorch's
    scalar tail differs), and the version moves by one."""
    ours, theirs = OTHERS[name]
    shape = {"small": (3, 4), "large": (64, 32, 40), "transposed": (40, 64, 32)}[layout]
    a = _specials(shape, np.float32)
    if name in ("hardtanh", "relu6"):
        a = np.nan_to_num(a, nan=0.25)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    x = am.tensor(a, requires_grad=True)
    h = x * 1
    if layout == "transposed":
        h = h.transpose(0, 2)
    arr, v0 = h.array, _ver(h)
    r = ours(F, h)
    assert r is h and h.array is arr and _ver(h) == v0 + 1
    gg = g if layout != "transposed" else g.transpose(2, 1, 0)
    h.backward(am.tensor(np.ascontiguousarray(gg)))
    tx = torch.tensor(a, requires_grad=True)
    th = tx.transpose(0, 2) if layout == "transposed" else tx
    ty = theirs(th)
    ty.backward(torch.tensor(np.ascontiguousarray(gg)))
    np.testing.assert_array_equal(h.detach().numpy(), ty.detach().numpy())
    np.testing.assert_array_equal(x.grad.numpy(), tx.grad.numpy())


@pytest.mark.parametrize("name", list(OTHERS))
def test_other_in_place_activations_refusals_and_saved_checks(name):
    """The leaf refusal (nothing written) and a node that saved the input refusing its
    backward after the in-place write, as PyTorch."""
    ours, _ = OTHERS[name]
    leaf = am.tensor([[1.0, -2.0]], requires_grad=True)
    with pytest.raises(RuntimeError, match="a leaf Variable that requires grad is being used in an in-place"):
        ours(F, leaf)
    assert leaf.tolist() == [[1.0, -2.0]]
    x = am.tensor([1.0, -2.0, 3.0], dtype=am.float64, requires_grad=True)
    a = x * 1
    y = (a * a).sum()
    ours(F, a)
    with pytest.raises(RuntimeError, match="is at version 1; expected version 0 instead"):
        y.backward()


@pytest.mark.parametrize("name,power", [("relu_", 2), ("leaky_0.2", 3), ("hardtanh", 3)])
def test_in_place_activations_double_backward_match_torch(name, power):
    """create_graph through an in-place activation: the second derivative of
    sum(act(x w)^power) w.r.t. w (relu_ in place in both libraries)."""
    ours, theirs = (lambda F_, h: h.relu_(), lambda t: t.relu_()) if name == "relu_" else OTHERS[name]
    a = np.random.default_rng(4).standard_normal((6, 3))
    wv = np.random.default_rng(5).standard_normal((3,))
    res = {}
    for lib in (am, torch):
        x, w = lib.tensor(a), lib.tensor(wv, requires_grad=True)
        h = x * w
        h = ours(F, h) if lib is am else theirs(h)
        (gw,) = lib.autograd.grad((h ** power).sum(), w, create_graph=True)
        (ggw,) = lib.autograd.grad((gw ** 2).sum(), w)
        res[lib] = (_np(gw), _np(ggw))
    for o, t in zip(res[am], res[torch]):
        np.testing.assert_allclose(o, t, rtol=1e-12, atol=1e-12)


def test_leaky_relu_negative_slope_in_place_keeps_the_input_for_its_gradient():
    """A negative slope in place: the result cannot tell the input's sign, so the input is kept
    (computed aside and copied in); the gradient is exact (PyTorch refuses this backward)."""
    a = np.array([[-2.0, -0.5, 0.0, 1.5]])
    x = am.tensor(a, requires_grad=True)
    h = x * 1
    F.leaky_relu(h, -0.3, inplace=True)
    h.sum().backward()
    np.testing.assert_array_equal(h.detach().numpy(), np.where(a > 0, a, -0.3 * a))
    np.testing.assert_array_equal(x.grad.numpy(), np.where(a > 0, 1.0, -0.3))


@pytest.mark.parametrize("name", ["leaky_0.2", "hardtanh", "relu6"])
def test_other_in_place_activations_allocate_no_result(name):
    """No result array: the traced peak stays below three quarters of one array (Hardtanh's
    bool mask, a quarter of it, is what its backward keeps, and the two comparisons it is made
    from), an eighth for LeakyReLU (oneDNN's forward writes straight into the input)."""
    import tracemalloc
    ours, _ = OTHERS[name]
    x = am.randn(64, 64, 256, requires_grad=True)
    h = x * 1
    if name == "leaky_0.2":
        from avila_ml.cpu_accel import _eltwise
        if not _eltwise.usable(h.array):
            pytest.skip("oneDNN unavailable: LeakyReLU's NumPy forward makes a slope * x temporary")
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        ours(F, h)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    limit = h.array.nbytes * 3 // 4 if name != "leaky_0.2" else h.array.nbytes // 8
    assert peak - base < limit, (peak - base, h.array.nbytes)


ELUS = {
    "elu": (lambda h, ip: F.elu(h, 0.7, inplace=ip), lambda t: TF.elu(t, 0.7)),
    "selu": (lambda h, ip: F.selu(h, inplace=ip), TF.selu),
    # CELU's reference is its formula in float64 torch ops: torch.celu's float64 gradient is
    # 3e-8 (relative) off the exact value (checked with mpmath at x = -0.52; its 1/alpha is
    # rounded to a lower precision), ours agrees with the exact value to 1e-16
    "celu": (lambda h, ip: F.celu(h, 1.3, inplace=ip), lambda t: torch.where(t > 0, t, 1.3 * torch.expm1(t / 1.3))),
}


@pytest.mark.parametrize("name", list(ELUS))
@pytest.mark.parametrize("layout", ["small", "large", "transposed"])
def test_elu_family_in_place_equals_out_of_place_and_torch(name, layout):
    """ELU/SELU/CELU in place (oneDNN's ELU forward into a large contiguous input; NumPy
    otherwise): into the input's array, values and gradients bit for bit the out-of-place op's
    (float32, specials included), and PyTorch's in float64 to 1e-12."""
    fn, tfn = ELUS[name]
    shape = {"small": (3, 4), "large": (64, 32, 40), "transposed": (40, 64, 32)}[layout]
    a = _specials(shape, np.float32)
    g = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    gg = g if layout != "transposed" else np.ascontiguousarray(g.transpose(2, 1, 0))
    res = []
    for ip in (True, False):
        x = am.tensor(a, requires_grad=True)
        h = x * 1
        if layout == "transposed":
            h = h.transpose(0, 2)
        arr = h.array
        r = fn(h, ip)
        assert (r is h and h.array is arr and _ver(h) == 1) if ip else r is not h
        r.backward(am.tensor(gg))
        res.append((r.detach().numpy(), x.grad.numpy()))
    np.testing.assert_array_equal(res[0][0], res[1][0])
    np.testing.assert_array_equal(res[0][1], res[1][1])
    b = np.random.default_rng(2).standard_normal((5, 7))
    x, tx = am.tensor(b, requires_grad=True), torch.tensor(b, requires_grad=True)
    h, th = x * 1, tx * 1
    fn(h, True)
    ty = tfn(th)
    (h * h).sum().backward()
    (ty * ty).sum().backward()
    np.testing.assert_allclose(h.detach().numpy(), ty.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(x.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_elu_in_place_allocates_no_result_and_refuses_saved_input():
    import tracemalloc
    from avila_ml.cpu_accel import _eltwise
    x = am.randn(64, 64, 256, requires_grad=True)
    h = x * 1
    if _eltwise.usable(h.array):  # oneDNN's forward writes into the input; NumPy's makes temporaries
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            F.elu(h, inplace=True)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak - base < h.array.nbytes // 2  # the sign mask (a quarter), no result array
    a = am.tensor([1.0, -2.0], dtype=am.float64, requires_grad=True) * 1
    y = (a * a).sum()
    F.elu(a, inplace=True)
    with pytest.raises(RuntimeError, match="is at version 1; expected version 0 instead"):
        y.backward()


# -- add_ / sub_ (``+=``, ``-=``) written into the input under autograd -------------------------

@pytest.mark.parametrize("op", ["add_", "sub_", "iadd", "isub"])
@pytest.mark.parametrize("other_shape", [(4, 5, 6), (6,), (5, 1)], ids=["same", "row", "col"])
def test_add_sub_in_place_write_into_the_input_and_match_torch(op, other_shape):
    """Under autograd, ``h += o`` / ``h.add_(o)`` (and sub) with ``o`` of h's dtype write into
    h's own array (no result array): values, version bump and gradients of both operands
    (the broadcast one summed) against PyTorch in float64, bit for bit in float32."""
    rng = np.random.default_rng(3)
    xa, oa, ga = rng.standard_normal((4, 5, 6)), rng.standard_normal(other_shape), rng.standard_normal((4, 5, 6))

    def run(lib, x, o):
        h = x * 2
        keep = h.array if lib is am else None
        v = _ver(h)
        if op == "iadd":
            h += o
        elif op == "isub":
            h -= o
        else:
            h = getattr(h, op)(o)
        assert _ver(h) == v + 1
        if keep is not None:
            assert h.array is keep
            assert h.grad_fn.name() == ("AddBackward0" if "add" in op else "SubBackward0")
        (h * h).backward(lib.tensor(ga) if lib is am else torch.tensor(ga))
        return h

    for dt in (np.float64, np.float32):
        x, o = am.tensor(xa.astype(dt), requires_grad=True), am.tensor(oa.astype(dt), requires_grad=True)
        xt, ot = (torch.tensor(a.astype(dt), requires_grad=True) for a in (xa, oa))
        h, ht = run(am, x, o), run(torch, xt, ot)
        cmp = np.testing.assert_array_equal if dt == np.float32 else np.testing.assert_allclose
        for a, b in ((h, ht), (x.grad, xt.grad)):
            cmp(_np(a), _np(b))
        # the broadcast operand's gradient is a sum whose order differs between the libraries
        np.testing.assert_allclose(_np(o.grad), _np(ot.grad), rtol=1e-6 if dt == np.float32 else 1e-12)


def test_add_in_place_saved_tensor_and_refusals_like_torch():
    """The write is refused for a leaf that requires grad and, for a tensor another node saved,
    its backward refuses to run (as PyTorch); promotion, a Python number and alpha keep the
    general path with PyTorch's values."""
    for lib in (am, torch):
        x = lib.ones(3, requires_grad=True)
        with pytest.raises(RuntimeError, match="leaf"):
            x += lib.ones(3)
        h = x * 2
        z = h * h  # saves h
        h += lib.ones(3)
        with pytest.raises(RuntimeError, match="modified by an inplace operation"):
            z.sum().backward()
    xa = np.array([1.0, -2.0, 3.0])
    outs = []
    for lib in (am, torch):
        x = lib.tensor(xa.astype(np.float32), requires_grad=True)
        h = x * 1
        h += lib.tensor(xa)  # float64 onto float32: computed promoted, cast back
        h.add_(2.5)
        h.sub_(lib.tensor(xa.astype(np.float32)), alpha=0.5)
        h.sum().backward()
        outs.append((_np(h), _np(x.grad), str(h.dtype).split(".")[-1]))
    np.testing.assert_array_equal(outs[0][0], outs[1][0])
    np.testing.assert_array_equal(outs[0][1], outs[1][1])
    assert outs[0][2] == outs[1][2] == "float32"


def test_add_in_place_of_a_view_matches_torch():
    """``v += o`` on a view of a non-leaf: the base sees the write and the gradient flows
    through CopySlices, as in PyTorch."""
    rng = np.random.default_rng(4)
    xa, oa = rng.standard_normal((3, 4)), rng.standard_normal(4)
    res = []
    for lib in (am, torch):
        x, o = lib.tensor(xa, requires_grad=True), lib.tensor(oa, requires_grad=True)
        h = x * 3
        v = h[1]
        v += o
        (h ** 2).sum().backward()
        res.append([_np(t) for t in (h, x.grad, o.grad)])
    for a, b in zip(*res):
        np.testing.assert_allclose(a, b, rtol=1e-12)


@pytest.mark.parametrize("op", ["iadd", "isub"])
def test_add_sub_in_place_allocate_no_result(op):
    """``h += o`` under autograd traces far less than one array of h's size (no result array,
    no copy back; NumPy reports its buffers to tracemalloc)."""
    import tracemalloc
    x = am.randn(64, 64, 256, requires_grad=True)
    o = am.randn(64, 64, 256)
    h = x * 1
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        if op == "iadd":
            h += o
        else:
            h -= o
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - base < h.array.nbytes // 8, (peak - base, h.array.nbytes)
