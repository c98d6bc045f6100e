"""``nn.Module``, ``nn.Parameter`` and the containers, against PyTorch's behaviour.

The same model is defined twice, once with ``avila_ml.nn`` and once with ``torch.nn``
(``make_net``); names, order, shapes, ``repr`` and ``load_state_dict`` reports must agree.
"""
from __future__ import annotations

import copy
import pickle
import re
from collections import OrderedDict

import numpy as np
import pytest
import torch

import avila_ml as am


def make_net(nn, lib, device=None):
    """One model definition for both libraries: every registration path, a shared module, a
    None parameter, persistent and non-persistent buffers, and every container."""
    kw = {} if device is None else {"device": device}

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(3, 3, **kw)
            self.register_buffer("count", lib.zeros(1, **kw))
            self.register_buffer("scratch", lib.ones(2, **kw), persistent=False)

        def forward(self, x):
            return self.fc(x)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.scale = nn.Parameter(lib.ones(3, **kw))
            self.encoder = nn.Sequential(nn.Linear(4, 3, **kw), nn.ReLU(), Block())
            self.blocks = nn.ModuleList([Block(), Block()])
            self.heads = nn.ModuleDict({"b": nn.Linear(3, 2, **kw), "a": nn.Linear(3, 1, bias=False, **kw)})
            self.extra = nn.ParameterList([nn.Parameter(lib.zeros(2, **kw)), nn.Parameter(lib.zeros(1, **kw))])
            self.table = nn.ParameterDict({"z": nn.Parameter(lib.ones(1, **kw)), "y": nn.Parameter(lib.ones(2, **kw))})
            self.shared = self.encoder[0]  # the same module under two names
            self.register_parameter("unused", None)
            self.register_buffer("step", lib.zeros((), dtype=lib.int64, **kw))
            self.register_module("tail", nn.Identity())

        def forward(self, x):
            h = self.encoder(x) * self.scale
            for b in self.blocks:
                h = b(h)
            return self.heads["b"](h)

    return Net()


def to_np(t):
    return np.asarray(t.detach().cpu().array) if isinstance(t, am.Tensor) else t.detach().cpu().numpy()


def same_repr(ours, theirs) -> bool:
    """Reprs equal up to the library's tensor-type spelling ([avila_ml.float32 of size 2] vs
    PyTorch's [torch.FloatTensor of size 2] in parameter containers)."""
    norm = lambda s: re.sub(r"\[\S+ of size", "[T of size", s.replace("avila_ml.", "torch."))  # noqa: E731
    return norm(ours) == norm(theirs)


def names(it):
    return [n for n, _ in it]


# ----------------------------------------------------------------------------- Parameter
def test_parameter_is_a_leaf_tensor_like_torch():
    p = am.nn.Parameter(am.tensor([1.0, 2.0]))
    tp = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    assert isinstance(p, am.Tensor) and p.is_leaf and p.requires_grad and p.grad_fn is None
    assert repr(p) == repr(tp)
    assert type(p * 2) is am.Tensor and type(p.detach()) is am.Tensor and type(p[0]) is am.Tensor
    q = am.nn.Parameter(am.tensor([1, 2]), requires_grad=False)
    assert not q.requires_grad
    with pytest.raises(RuntimeError, match="floating point"):
        am.nn.Parameter(am.tensor([1, 2]))
    with pytest.raises(TypeError, match="Parameter"):
        am.nn.Parameter([1.0, 2.0])
    assert am.nn.Parameter().shape == (0,)


def test_parameter_shares_memory_and_copies_deeply():
    t = am.tensor([1.0, 2.0])
    p = am.nn.Parameter(t)
    with am.no_grad():
        p.mul_(3)
    assert t.tolist() == [3.0, 6.0]
    p.grad = am.tensor([1.0, 1.0])
    p.tag = "kept"
    q = copy.deepcopy(p)
    assert isinstance(q, am.nn.Parameter) and q is not p and q.requires_grad
    assert q.tolist() == [3.0, 6.0] and q.grad.tolist() == [1.0, 1.0] and q.tag == "kept"
    with am.no_grad():
        q.zero_()
    assert p.tolist() == [3.0, 6.0]
    r = pickle.loads(pickle.dumps(p))
    assert isinstance(r, am.nn.Parameter) and r.tolist() == [3.0, 6.0] and r.requires_grad


# ----------------------------------------------------------------------------- names and order
def test_names_order_and_shapes_equal_torch(device):
    net, tnet = make_net(am.nn, am, device), make_net(torch.nn, torch)
    assert names(net.named_parameters()) == names(tnet.named_parameters())
    assert names(net.named_parameters(remove_duplicate=False)) == names(tnet.named_parameters(remove_duplicate=False))
    assert names(net.named_buffers()) == names(tnet.named_buffers())
    assert names(net.named_modules()) == names(tnet.named_modules())
    assert names(net.named_children()) == names(tnet.named_children())
    assert names(net.named_parameters(recurse=False)) == names(tnet.named_parameters(recurse=False))
    assert names(net.named_parameters(prefix="model")) == names(tnet.named_parameters(prefix="model"))
    sd, tsd = net.state_dict(), tnet.state_dict()
    assert isinstance(sd, OrderedDict)
    assert list(sd) == list(tsd)
    assert [tuple(v.shape) for v in sd.values()] == [tuple(v.shape) for v in tsd.values()]
    assert list(net.state_dict(prefix="m.")) == list(tnet.state_dict(prefix="m."))
    assert len(list(net.parameters())) == len(list(tnet.parameters()))
    assert len(list(net.modules())) == len(list(tnet.modules()))
    assert len(list(net.children())) == len(list(tnet.children()))


def test_repr_equals_torch():
    net, tnet = make_net(am.nn, am), make_net(torch.nn, torch)
    assert same_repr(repr(net), repr(tnet))
    seq = am.nn.Sequential(am.nn.Linear(2, 2), am.nn.Linear(2, 2), am.nn.ReLU(), am.nn.Linear(2, 2))
    tseq = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2), torch.nn.ReLU(), torch.nn.Linear(2, 2))
    assert repr(seq) == repr(tseq)
    ml = am.nn.ModuleList([am.nn.Linear(2, 2) for _ in range(3)] + [am.nn.ReLU()])
    tml = torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(3)] + [torch.nn.ReLU()])
    assert repr(ml) == repr(tml)
    assert repr(am.nn.ModuleList()) == repr(torch.nn.ModuleList())
    assert repr(am.nn.Module()) == repr(torch.nn.Module())


def test_forward_and_gradients_match_torch_after_state_dict_copy():
    net, tnet = make_net(am.nn, am), make_net(torch.nn, torch)
    tnet.double()
    net.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})
    net.double()
    x = np.random.default_rng(0).normal(size=(5, 4))
    y = net(am.tensor(x))
    ty = tnet(torch.tensor(x))
    np.testing.assert_allclose(to_np(y), ty.detach().numpy(), rtol=1e-12, atol=1e-13)
    y.sum().backward()
    ty.sum().backward()
    tgrads = dict(tnet.named_parameters())
    for n, p in net.named_parameters():
        tg = tgrads[n].grad
        assert (p.grad is None) == (tg is None), n
        if tg is not None:
            np.testing.assert_allclose(to_np(p.grad), tg.numpy(), rtol=1e-12, atol=1e-13, err_msg=n)


# ----------------------------------------------------------------------------- load_state_dict
def test_load_state_dict_reports_keys_by_name_like_torch():
    net, tnet = make_net(am.nn, am), make_net(torch.nn, torch)
    sd = {k: v.numpy() for k, v in tnet.state_dict().items()}
    del sd["encoder.0.bias"], sd["blocks.1.count"]
    sd["heads.c.weight"] = np.zeros((1, 3))
    sd["scratch_typo"] = np.zeros(2)
    sd["blocks.0.scratch"] = np.zeros(2)  # a non-persistent buffer is unexpected
    with pytest.raises(RuntimeError) as e:
        net.load_state_dict(sd)
    msg = str(e.value)
    for key in ["encoder.0.bias", "blocks.1.count", "heads.c.weight", "scratch_typo", "blocks.0.scratch"]:
        assert f'"{key}"' in msg, (key, msg)
    assert "Missing key(s)" in msg and "Unexpected key(s)" in msg and "Net" in msg
    res = net.load_state_dict(sd, strict=False)
    tres = tnet.load_state_dict({k: torch.from_numpy(v) for k, v in sd.items()}, strict=False)
    assert sorted(res.missing_keys) == sorted(tres.missing_keys)
    assert sorted(res.unexpected_keys) == sorted(tres.unexpected_keys)
    assert res == (res.missing_keys, res.unexpected_keys)


def test_load_state_dict_shape_mismatch_names_key_and_shapes():
    m = am.nn.Sequential(am.nn.Linear(3, 2))
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.weight.*\(2, 4\).*\(2, 3\)"):
        m.load_state_dict({"0.weight": np.zeros((2, 4)), "0.bias": np.zeros(2)})
    with pytest.raises(RuntimeError, match=r"size mismatch for 0\.bias"):
        m.load_state_dict({"0.bias": np.zeros(3)}, strict=False)  # shape errors even when not strict
    with pytest.raises(TypeError, match="dict-like"):
        m.load_state_dict([("0.bias", np.zeros(2))])


def test_load_state_dict_copies_in_place_and_accepts_tensors(device):
    m = am.nn.Linear(2, 2, device=device)
    w = m.weight
    src = {"weight": am.ones(2, 2, dtype=am.float64), "bias": np.array([5.0, 6.0])}
    assert str(m.load_state_dict(src)) == "<All keys matched successfully>"
    assert m.weight is w and m.weight.dtype == am.float32 and str(m.weight.device) == str(am.device(device))
    np.testing.assert_array_equal(to_np(m.weight), np.ones((2, 2)))
    np.testing.assert_array_equal(to_np(m.bias), [5.0, 6.0])
    assert m.weight.requires_grad


def test_state_dict_is_detached_but_shares_memory():
    m = am.nn.Linear(2, 2)
    sd = m.state_dict()
    assert not sd["weight"].requires_grad and type(sd["weight"]) is am.Tensor
    with am.no_grad():
        m.weight.fill_(3.0)
    assert sd["weight"].tolist() == [[3.0, 3.0], [3.0, 3.0]]
    kv = m.state_dict(keep_vars=True)
    assert kv["weight"] is m.weight


def test_round_trip_into_torch_strict():
    net, tnet = make_net(am.nn, am), make_net(torch.nn, torch)
    tnet.load_state_dict({k: torch.from_numpy(np.array(to_np(v))) for k, v in net.state_dict().items()}, strict=True)
    for k, v in tnet.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), to_np(net.state_dict()[k]))


# ----------------------------------------------------------------------------- hooks
def test_forward_hooks_modify_and_remove():
    m = am.nn.Linear(2, 2)
    calls = []
    h1 = m.register_forward_pre_hook(lambda mod, args: (args[0] * 0,))
    h2 = m.register_forward_hook(lambda mod, args, out: calls.append("post") or out + 1)
    y = m(am.ones(1, 2))
    np.testing.assert_allclose(to_np(y), to_np(m.bias)[None] + 1, rtol=1e-6)
    assert calls == ["post"]
    h1.remove()
    h2.remove()
    h2.remove()  # idempotent
    np.testing.assert_allclose(to_np(m(am.zeros(1, 2))), to_np(m.bias)[None], rtol=1e-6)
    assert calls == ["post"]


def test_hook_order_prepend_and_kwargs():
    m = am.nn.Identity()
    order = []
    m.register_forward_pre_hook(lambda mod, a: order.append("pre1"))
    m.register_forward_pre_hook(lambda mod, a: order.append("pre0"), prepend=True)
    m.register_forward_hook(lambda mod, a, o: order.append("post"))

    def kw_pre(mod, args, kwargs):
        order.append("prekw")
        return (args[0] + 1,), kwargs

    with m.register_forward_pre_hook(kw_pre, with_kwargs=True):
        y = m(am.tensor([1.0]))
    assert order == ["pre0", "pre1", "prekw", "post"] and y.tolist() == [2.0]
    seen = []
    m.register_forward_hook(lambda mod, a, kw, o: seen.append((a, kw)), with_kwargs=True)
    m(am.tensor([1.0]))
    assert len(seen) == 1 and seen[0][1] == {}


def test_pre_hook_single_value_is_wrapped_like_torch():
    for nn, lib in [(am.nn, am), (torch.nn, torch)]:
        m = nn.Identity()
        m.register_forward_pre_hook(lambda mod, args: args[0] * 3)
        assert m(lib.tensor([1.0])).tolist() == [3.0]


# ----------------------------------------------------------------------------- modes, dtype, device
def test_train_eval_propagate():
    net = make_net(am.nn, am)
    assert all(m.training for m in net.modules())
    assert net.eval() is net
    assert not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())
    net.blocks.train(False)
    assert net.training and not net.blocks[0].fc.training
    with pytest.raises(ValueError, match="bool"):
        net.train("no")


def test_to_dtype_keeps_parameter_identity_and_converts_grads(device):
    net = make_net(am.nn, am, device)
    params = list(net.parameters())
    ids = [id(p) for p in params]
    net(am.ones(2, 4, device=device)).sum().backward()
    assert net.to(am.float64) is net
    assert [id(p) for p in net.parameters()] == ids
    assert all(p.dtype == am.float64 for p in params)
    assert all(p.grad.dtype == am.float64 for p in params if p.grad is not None)
    assert net.blocks[0].count.dtype == am.float64
    assert net.step.dtype == am.int64  # integer buffers keep their dtype, as in PyTorch
    net.float()
    assert all(p.dtype == am.float32 for p in params)
    net.half()
    assert net.scale.dtype == am.float16
    net.double()
    assert net.scale.dtype == am.float64 and net.scale.requires_grad and net.scale.is_leaf
    with pytest.raises(TypeError, match="floating point"):
        net.to(am.int32)
    with pytest.raises(TypeError, match="unexpected argument"):
        net.to(3.5)
    net.to(device, am.float32)
    assert net.scale.dtype == am.float32
    net.to(am.zeros(1, dtype=am.float64, device=device))
    assert net.scale.dtype == am.float64
    assert net.cpu() is net and str(net.scale.device) == "cpu"
    assert [id(p) for p in net.parameters()] == ids


def test_update_after_to_reaches_the_same_parameter(device):
    m = am.nn.Linear(2, 1, device=device)
    held = list(m.parameters())  # what an optimizer created before .to() would hold
    m.to(am.float64)
    m(am.ones(1, 2, dtype=am.float64, device=device)).sum().backward()
    with am.no_grad():
        for p in held:
            p.sub_(p.grad, alpha=0.1)
    assert held[0] is m.weight and m.weight.dtype == am.float64


def test_zero_grad_and_requires_grad_():
    m = am.nn.Linear(3, 2)
    m(am.ones(1, 3)).sum().backward()
    m.zero_grad(set_to_none=False)
    assert m.weight.grad is not None and float(m.weight.grad.abs().sum()) == 0.0
    m.zero_grad()
    assert m.weight.grad is None and m.bias.grad is None
    m.requires_grad_(False)
    assert not any(p.requires_grad for p in m.parameters())
    m.requires_grad_()
    assert all(p.requires_grad for p in m.parameters())


def test_apply_visits_children_first_and_returns_self():
    net = am.nn.Sequential(am.nn.Linear(2, 2), am.nn.Sequential(am.nn.ReLU()))
    tnet = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Sequential(torch.nn.ReLU()))
    seen, tseen = [], []
    assert net.apply(lambda m: seen.append(type(m).__name__)) is net
    tnet.apply(lambda m: tseen.append(type(m).__name__))
    assert seen == tseen


# ----------------------------------------------------------------------------- attribute protocol
def test_setattr_registers_by_type_and_validates():
    m = am.nn.Module()
    m.w = am.nn.Parameter(am.zeros(2))
    m.sub = am.nn.Linear(2, 2)
    m.plain = 3
    assert names(m.named_parameters()) == ["w", "sub.weight", "sub.bias"]
    assert "w" not in m.__dict__ and m.plain == 3
    with pytest.raises(TypeError, match="cannot assign 'Tensor' as parameter 'w'"):
        m.w = am.zeros(2)
    m.w = None
    assert m.w is None and names(m.named_parameters()) == ["sub.weight", "sub.bias"]
    with pytest.raises(TypeError, match="child module 'sub'"):
        m.sub = 3
    m.register_buffer("buf", am.zeros(1))
    m.buf = am.ones(1)
    assert m.buf.tolist() == [1.0] and "buf" in m.state_dict()
    with pytest.raises(TypeError, match="buffer 'buf'"):
        m.buf = 1.0
    # re-assigning a name with another kind moves it, as in PyTorch
    m.sub = am.nn.Parameter(am.zeros(1))
    assert "sub" not in m._modules and "sub" in m._parameters
    with pytest.raises(KeyError, match=r"\."):
        m.register_buffer("a.b", am.zeros(1))
    with pytest.raises(KeyError, match="already exists"):
        m.register_buffer("plain", am.zeros(1))
    with pytest.raises(TypeError, match="register_buffer"):
        m.register_buffer("x", np.zeros(1))
    with pytest.raises(TypeError, match="register_parameter"):
        m.register_parameter("x", am.zeros(1))
    with pytest.raises(AttributeError, match="'Module' object has no attribute 'missing'"):
        m.missing


def test_assignment_before_init_raises():
    class Bad(am.nn.Module):
        def __init__(self):
            self.w = am.nn.Parameter(am.zeros(1))
            super().__init__()

    with pytest.raises(AttributeError, match="before Module.__init__"):
        Bad()


def test_delattr_dir_and_getters():
    m = am.nn.Sequential(am.nn.Linear(2, 2))
    m.register_buffer("b", am.zeros(1))
    m.p = am.nn.Parameter(am.zeros(1))
    d = dir(m)
    assert "b" in d and "p" in d and "forward" in d and "0" not in d
    assert m.get_submodule("0") is m[0] and m.get_parameter("0.weight") is m[0].weight
    assert m.get_buffer("b") is m.b
    with pytest.raises(AttributeError, match="no submodule"):
        m.get_submodule("0.nope")
    del m.b, m.p
    assert names(m.named_buffers()) == [] and names(m.named_parameters()) == ["0.weight", "0.bias"]


def test_missing_forward_raises_clearly():
    with pytest.raises(RuntimeError, match='missing the required "forward"'):
        am.nn.Module()(am.ones(1))


def test_deepcopy_and_pickle_module():
    m = am.nn.Sequential(am.nn.Linear(2, 2), am.nn.ReLU())
    c = copy.deepcopy(m)
    assert c[0].weight is not m[0].weight and isinstance(c[0].weight, am.nn.Parameter)
    np.testing.assert_array_equal(to_np(c[0].weight), to_np(m[0].weight))
    with am.no_grad():
        c[0].weight.zero_()
    assert float(m[0].weight.abs().sum()) > 0
    p = pickle.loads(pickle.dumps(m))
    np.testing.assert_array_equal(to_np(p(am.ones(1, 2))), to_np(m(am.ones(1, 2))))
    assert names(p.named_parameters()) == ["0.weight", "0.bias"]


# ----------------------------------------------------------------------------- containers
def test_sequential_like_torch():
    mods = [am.nn.Linear(2, 3), am.nn.ReLU(), am.nn.Linear(3, 1)]
    s = am.nn.Sequential(*mods)
    ts = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    assert len(s) == 3 and s[0] is mods[0] and s[-1] is mods[2] and list(s) == mods
    sl = s[1:]
    assert isinstance(sl, am.nn.Sequential) and list(sl) == mods[1:]
    assert names(sl.named_children()) == names(ts[1:].named_children())
    s.append(am.nn.Tanh())
    ts.append(torch.nn.Tanh())
    s.insert(1, am.nn.Identity())
    ts.insert(1, torch.nn.Identity())
    assert names(s.named_parameters()) == names(ts.named_parameters())
    del s[0]
    del ts[0]
    assert names(s.named_children()) == names(ts.named_children())
    assert repr(s) == repr(ts)
    popped = s.pop(0)
    ts.pop(0)
    assert isinstance(popped, am.nn.Identity) and repr(s) == repr(ts)
    s[0] = am.nn.Sigmoid()
    assert isinstance(s[0], am.nn.Sigmoid)
    with pytest.raises(IndexError, match="out of range"):
        s[10]
    with pytest.raises(TypeError, match="not a Module"):
        am.nn.Sequential(am.nn.ReLU(), 3)
    od = am.nn.Sequential(OrderedDict([("first", am.nn.Linear(2, 2)), ("act", am.nn.ReLU())]))
    tod = torch.nn.Sequential(OrderedDict([("first", torch.nn.Linear(2, 2)), ("act", torch.nn.ReLU())]))
    assert list(od.state_dict()) == list(tod.state_dict()) and repr(od) == repr(tod)
    both = od + am.nn.Sequential(am.nn.Tanh())
    assert len(both) == 3 and names(both.named_children()) == ["0", "1", "2"]
    x = am.ones(4, 2)
    assert od(x).shape == (4, 2)
    od.extend([am.nn.Tanh()])
    assert len(od) == 3


def test_module_list_like_torch():
    ml = am.nn.ModuleList([am.nn.Linear(1, 1), am.nn.Linear(1, 2)])
    tl = torch.nn.ModuleList([torch.nn.Linear(1, 1), torch.nn.Linear(1, 2)])
    ml.append(am.nn.ReLU()); tl.append(torch.nn.ReLU())
    ml.extend([am.nn.Linear(2, 2)]); tl.extend([torch.nn.Linear(2, 2)])
    ml.insert(0, am.nn.Tanh()); tl.insert(0, torch.nn.Tanh())
    ml += [am.nn.Identity()]; tl += [torch.nn.Identity()]
    assert names(ml.named_parameters()) == names(tl.named_parameters())
    del ml[1]; del tl[1]
    assert names(ml.named_children()) == names(tl.named_children())
    assert isinstance(ml[1:3], am.nn.ModuleList) and len(ml[1:3]) == 2
    assert ml.pop(0).__class__.__name__ == "Tanh"
    tl.pop(0)
    assert repr(ml) == repr(tl)
    ml[0] = am.nn.Sigmoid()
    assert isinstance(ml[0], am.nn.Sigmoid) and isinstance(ml[-1], am.nn.Identity)
    with pytest.raises(TypeError, match="ModuleList.append"):
        ml.append(3)


def test_module_dict_like_torch():
    md = am.nn.ModuleDict({"b": am.nn.Linear(1, 1)})
    td = torch.nn.ModuleDict({"b": torch.nn.Linear(1, 1)})
    md["a"] = am.nn.Linear(1, 2); td["a"] = torch.nn.Linear(1, 2)
    md.update([("c", am.nn.ReLU())]); td.update([("c", torch.nn.ReLU())])
    assert list(md.keys()) == list(td.keys()) and "a" in md and len(md) == 3
    assert names(md.named_parameters()) == names(td.named_parameters())
    assert repr(md) == repr(td)
    assert md.pop("c").__class__.__name__ == "ReLU" and list(md) == ["b", "a"]
    with pytest.raises(KeyError, match="'zz'"):
        md["zz"]
    md.clear()
    assert len(md) == 0


def test_parameter_list_and_dict_like_torch():
    pl = am.nn.ParameterList([am.nn.Parameter(am.zeros(2, 3)), am.ones(1)])
    tpl = torch.nn.ParameterList([torch.nn.Parameter(torch.zeros(2, 3)), torch.ones(1)])
    pl.append(am.zeros(4)); tpl.append(torch.zeros(4))
    assert isinstance(pl[1], am.nn.Parameter) and pl[1].requires_grad
    assert names(pl.named_parameters()) == names(tpl.named_parameters())
    assert same_repr(repr(pl), repr(tpl))
    assert len(pl) == 3 and [tuple(p.shape) for p in pl] == [(2, 3), (1,), (4,)]
    pd = am.nn.ParameterDict({"w": am.ones(2)})
    tpd = torch.nn.ParameterDict({"w": torch.ones(2)})
    pd["b"] = am.nn.Parameter(am.zeros(1)); tpd["b"] = torch.nn.Parameter(torch.zeros(1))
    pd.update({"c": am.zeros(3)}); tpd.update({"c": torch.zeros(3)})
    assert list(pd.keys()) == list(tpd.keys()) and "w" in pd
    assert list(pd.state_dict()) == list(tpd.state_dict())
    assert same_repr(repr(pd), repr(tpd))
    assert pd.pop("w").shape == (2,) and list(pd) == ["b", "c"]
    with pytest.raises(TypeError, match="ParameterList"):
        pl.append(3.0)


def test_device_move(device):
    net = make_net(am.nn, am)
    ids = [id(p) for p in net.parameters()]
    net.to(device)
    assert all(str(p.device) == str(am.device(device)) for p in net.parameters())
    assert all(str(b.device) == str(am.device(device)) for b in net.buffers())
    assert [id(p) for p in net.parameters()] == ids
    y = net(am.ones(2, 4, device=device))
    assert str(y.device) == str(am.device(device))
