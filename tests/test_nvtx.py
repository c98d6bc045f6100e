"""NVTX ranges: named per op family and phase, pushed/popped in pairs when active."""
import sys
import types

import avila_ml as am
from avila_ml.backends import nvtx


def test_range_names_follow_op_family():
    from avila_ml.ops.elementwise import Mul
    assert nvtx.range_name(Mul, "forward") == "elementwise.Mul.forward"


def test_ranges_wrap_forward_and_backward(monkeypatch):
    calls = []
    fake = types.SimpleNamespace(push_range=lambda name, domain: calls.append(("push", name)),
                                 pop_range=lambda domain: calls.append(("pop", None)))
    monkeypatch.setitem(sys.modules, "nvtx", fake)
    monkeypatch.setattr(nvtx, "active", False)
    assert nvtx.activate()
    try:
        x = am.ones(3, requires_grad=True)
        (x * 2).sum().backward()
    finally:
        monkeypatch.setattr(nvtx, "active", False)
    names = [n for k, n in calls if k == "push"]
    assert "elementwise.Mul.forward" in names and "reduction.Sum.forward" in names
    assert "reduction.Sum.backward" in names and "elementwise.Mul.backward" in names
    assert sum(k == "push" for k, _ in calls) == sum(k == "pop" for k, _ in calls)


def test_disabled_by_environment(monkeypatch):
    monkeypatch.setenv("AVILA_ML_NVTX", "0")
    monkeypatch.setattr(nvtx, "active", False)
    assert not nvtx.activate() and not nvtx.active
