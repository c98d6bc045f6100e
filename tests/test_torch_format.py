"""PyTorch checkpoints without PyTorch: ``avila_ml.load`` / ``torch_format.load_torch`` read
``torch.save`` files (zip and legacy) into tensors equal to the torch originals; ``save_torch``
and ``io.save_safetensors`` write files PyTorch and ``safetensors`` read; and the restricted
unpickler refuses every pickle that would run code -- checked with hand-made attack shapes
(GLOBAL/REDUCE/BUILD/INST/OBJ/EXT/persistent ids/SETITEMS on non-dicts/storage size lies, the
shapes of CVE-2025-32434 and CVE-2026-24747) and with hypothesis fuzzing, with a canary that a
normal unpickler fires."""
from __future__ import annotations

import collections
import copyreg
import io
import os
import pickle
import struct
import sys
import types
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import avila_ml as am
from avila_ml.torch_format import RestrictedUnpickler, UnsafeCheckpointError, load_torch, save_torch

# ---------------------------------------------------------------------------- the canary
# A module whose function, if ever called during a load, records it. Plain pickle.loads
# calls it (checked below), so every attack pickle here really would run code.
_canary = types.ModuleType("avila_canary")
_canary.fired = []


def _fire(*a):
    _canary.fired.append(a)
    return 0


_fire.__module__, _fire.__qualname__, _fire.__name__ = "avila_canary", "fire", "fire"
_canary.fire = _fire
sys.modules["avila_canary"] = _canary


class _Fire:
    def __reduce__(self):
        return (_canary.fire, ("boom",))


def _evil_pickle(proto=2) -> bytes:
    return pickle.dumps({"w": [1, _Fire()]}, protocol=proto)


@pytest.fixture(autouse=True)
def _reset_canary():
    _canary.fired.clear()
    yield
    assert not _canary.fired, f"the canary fired: {_canary.fired}"


def test_canary_really_detects_execution():
    pickle.loads(_evil_pickle())
    assert _canary.fired == [("boom",)]
    _canary.fired.clear()


def _t(x):
    return x.detach().numpy()


def _state(kind: str):
    torch.manual_seed(0)
    base = torch.arange(24, dtype=torch.float64).reshape(4, 6)
    sd = collections.OrderedDict(
        f32=torch.randn(3, 4), f16=torch.randn(5).half(), f64=base, i64=torch.tensor([1, -2, 3]),
        i32=torch.tensor([7], dtype=torch.int32), i16=torch.tensor([-3], dtype=torch.int16),
        i8=torch.tensor([-1], dtype=torch.int8), u8=torch.tensor([250], dtype=torch.uint8),
        b=torch.tensor([True, False, True]), scalar=torch.tensor(2.5),
        transposed=base.t(), row=base[2], strided=base[:, ::2], empty=torch.zeros(0, 3),
        expanded=torch.tensor([1.0, 2.0]).expand(3, 2))
    return sd


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_state_dict_round_trip_against_torch(tmp_path, legacy):
    sd = _state("all")
    ck = {"model": sd, "epoch": 7, "lr": 3e-4, "betas": (0.9, 0.999), "names": ["a", "b"],
          "nested": {"deeper": {"x": [1, 2.5, None, True]}}, "size": torch.Size([2, 3]),
          "device": torch.device("cpu")}
    path = tmp_path / "ckpt.pt"
    torch.save(ck, path, _use_new_zipfile_serialization=not legacy)
    out = am.load(str(path))
    assert type(out["model"]) is collections.OrderedDict and list(out["model"]) == list(sd)
    for k, v in sd.items():
        o = out["model"][k]
        assert isinstance(o, am.Tensor) and o.dtype.name == str(v.dtype).replace("torch.", ""), k
        assert o.shape == tuple(v.shape), k
        np.testing.assert_array_equal(_t(o), _t(v), err_msg=k)
    # views of one storage still share memory, as torch.load gives them
    m = out["model"]
    assert np.shares_memory(m["f64"].array, m["transposed"].array)
    assert np.shares_memory(m["f64"].array, m["strided"].array)
    assert out["epoch"] == 7 and out["lr"] == 3e-4 and out["betas"] == (0.9, 0.999)
    assert out["nested"] == {"deeper": {"x": [1, 2.5, None, True]}} and out["names"] == ["a", "b"]
    assert out["size"] == (2, 3) and isinstance(out["size"], am.Size) and out["device"] == am.device("cpu")


def test_bfloat16_is_widened_to_float32(tmp_path):
    x = torch.tensor([1.5, -2.25, 3e38, 1e-38], dtype=torch.bfloat16)
    torch.save({"x": x}, tmp_path / "b.pt")
    out = am.load(str(tmp_path / "b.pt"))["x"]
    assert out.dtype == am.float32
    np.testing.assert_array_equal(_t(out), x.float().numpy())


def test_module_and_optimizer_state_dicts_load_into_avila_ml(tmp_path):
    tnet = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(tnet.parameters(), lr=0.01)
    tnet(torch.randn(5, 3)).sum().backward()
    opt.step()
    torch.save({"model": tnet.state_dict(), "opt": opt.state_dict()}, tmp_path / "c.pth")
    ck = am.load(str(tmp_path / "c.pth"))
    net = am.nn.Sequential(am.nn.Linear(3, 4), am.nn.ReLU(), am.nn.Linear(4, 2))
    net.load_state_dict(ck["model"])
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(np.float32)
    np.testing.assert_allclose(_t(net(am.tensor(x))), tnet(torch.tensor(x)).detach().numpy(), rtol=1e-6, atol=1e-6)
    st_ = ck["opt"]["state"][0]
    np.testing.assert_array_equal(_t(st_["exp_avg"]), opt.state_dict()["state"][0]["exp_avg"].numpy())
    assert ck["opt"]["param_groups"][0]["lr"] == 0.01
    assert getattr(ck["model"], "_metadata", None) is not None  # the state_dict version table survives


def test_parameters_keep_requires_grad(tmp_path):
    torch.save({"p": torch.nn.Parameter(torch.ones(2)), "q": torch.nn.Parameter(torch.ones(1), requires_grad=False)},
               tmp_path / "p.pt")
    out = am.load(str(tmp_path / "p.pt"))
    assert out["p"].requires_grad and not out["q"].requires_grad


def test_map_location_and_cuda_message(tmp_path):
    torch.save({"w": torch.ones(2)}, tmp_path / "w.pt")
    assert am.load(str(tmp_path / "w.pt"), map_location="cpu")["w"].device == "cpu"
    if not am.cuda.is_available():
        with pytest.raises(RuntimeError, match="no CUDA device"):
            am.load(str(tmp_path / "w.pt"), map_location="cuda")


# --------------------------------------------------------------------------- writing
def test_save_torch_is_read_by_torch_weights_only(tmp_path):
    w = am.randn(3, 4)
    obj = {"model": collections.OrderedDict(w=w, wt=w.T, i=am.tensor([1, 2]), b=am.tensor([True]),
                                            h=am.ones(2, dtype=am.float16), s=am.tensor(1.5)),
           "epoch": 3, "big": 1 << 40, "neg": -5, "lr": 0.1, "cfg": {"name": "x", "sizes": [1, 2], "t": (1, None)},
           "dev": am.device("cpu")}
    path = tmp_path / "out.pt"
    save_torch(obj, str(path))
    back = torch.load(path, weights_only=True)
    for k, v in obj["model"].items():
        np.testing.assert_array_equal(back["model"][k].numpy(), _t(v))
        assert str(back["model"][k].dtype) == f"torch.{v.dtype.name}"
    assert back["epoch"] == 3 and back["big"] == 1 << 40 and back["neg"] == -5 and back["lr"] == 0.1
    assert back["cfg"] == {"name": "x", "sizes": [1, 2], "t": (1, None)} and back["dev"] == torch.device("cpu")
    assert type(back["model"]) is collections.OrderedDict
    mm = torch.load(path, weights_only=True, mmap=True)  # storages are 64-byte aligned
    np.testing.assert_array_equal(mm["model"]["w"].numpy(), _t(w))
    again = am.load(str(path))
    np.testing.assert_array_equal(_t(again["model"]["wt"]), _t(w.T))
    with pytest.raises(TypeError, match="save_torch"):
        save_torch({"f": lambda: 0}, io.BytesIO())


def test_state_dict_from_avila_ml_loads_into_torch_module(tmp_path):
    net = am.nn.Linear(3, 2)
    save_torch(net.state_dict(), str(tmp_path / "lin.pt"))
    tnet = torch.nn.Linear(3, 2)
    tnet.load_state_dict(torch.load(tmp_path / "lin.pt", weights_only=True))
    np.testing.assert_array_equal(tnet.weight.detach().numpy(), _t(net.weight))


def test_safetensors_both_ways(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"w": am.randn(2, 3), "i": am.tensor([1, 2, 3]), "b": am.tensor([True, False]),
               "h": am.ones(4, dtype=am.float16), "d": am.arange(3, dtype=am.float64), "s": am.tensor(2.0)}
    am.io.save_safetensors(tensors, str(tmp_path / "a.safetensors"), metadata={"format": "pt"})
    got = safetensors_torch.load_file(str(tmp_path / "a.safetensors"))
    assert set(got) == set(tensors)
    for k, v in tensors.items():
        np.testing.assert_array_equal(got[k].numpy(), _t(v))
    # the other way: a file written by safetensors (as Hugging Face weights are), bf16 included
    theirs = {"emb": torch.randn(4, 3), "bf": torch.tensor([1.5, -2.0], dtype=torch.bfloat16),
              "ids": torch.arange(5), "mask": torch.tensor([True, False])}
    safetensors_torch.save_file(theirs, str(tmp_path / "hf.safetensors"), metadata={"format": "pt"})
    out = am.load(str(tmp_path / "hf.safetensors"))
    assert set(out) == set(theirs)
    for k, v in theirs.items():
        np.testing.assert_array_equal(_t(out[k]), v.float().numpy() if v.dtype == torch.bfloat16 else v.numpy())
    # our own checkpoint format is still ours (nested objects), and still loads as before
    am.save({"a": {"b": am.ones(1)}}, str(tmp_path / "ours.ckpt"))
    assert am.load(str(tmp_path / "ours.ckpt"))["a"]["b"].tolist() == [1.0]


def test_safetensors_reader_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.safetensors"
    header = b'{"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}}'
    path.write_bytes(struct.pack("<Q", len(header)) + header + b"\0" * 8)  # 8 of 16 bytes
    with pytest.raises(am.io.CheckpointError, match="data_offsets|out of bounds|cover"):
        am.io.load_safetensors(str(path))


# ---------------------------------------------------------------------------- attacks
def _zip_with(pkl: bytes, extra: dict | None = None) -> io.BytesIO:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
        for k, v in (extra or {}).items():
            z.writestr(f"archive/data/{k}", v)
    buf.seek(0)
    return buf


def _refused(data, match=None):
    f = io.BytesIO(data) if isinstance(data, bytes) else data
    with pytest.raises(UnsafeCheckpointError, match=match):
        load_torch(f)


G = lambda mod, name: b"c" + mod + b"\n" + name + b"\n"  # noqa: E731  GLOBAL opcode


@pytest.mark.parametrize("proto", [0, 1, 2, 3, 4, 5])
def test_reduce_of_a_foreign_callable_is_refused(proto):
    _refused(_evil_pickle(proto), "avila_canary.fire|not on the allow-list")
    _refused(_zip_with(_evil_pickle(proto)).getvalue(), "allow-list")


@pytest.mark.parametrize("payload", [
    b"\x80\x02" + G(b"os", b"system") + b"X\x04\x00\x00\x00trueq\x00\x85R.",
    b"\x80\x02" + G(b"builtins", b"eval") + b"X\x01\x00\x00\x001\x85R.",
    b"\x80\x02" + G(b"builtins", b"getattr") + b".",
    b"\x80\x04\x8c\x02os\x8c\x06system\x93.",                              # STACK_GLOBAL
    b"\x80\x02" + G(b"torch", b"load") + b".",                              # torch, but not allowed
    b"\x80\x02" + G(b"torch._utils", b"_rebuild_tensor_v2_evil") + b".",
], ids=["os.system", "eval", "getattr", "stack_global", "torch.load", "near-miss"])
def test_globals_outside_the_allow_list_are_refused(payload):
    _refused(payload, "allow-list")


def test_inst_obj_ext_and_buffers_are_refused():
    _refused(b"(iavila_canary\nfire\n.", "INST")
    _refused(b"(" + G(b"avila_canary", b"fire") + b"o.", "allow-list")   # OBJ needs a class: GLOBAL first
    _refused(b"(N" + b"o.", "OBJ")
    copyreg.add_extension("avila_canary", "fire", 0x7A11)
    try:
        data = pickle.dumps(_canary.fire, protocol=2)
        assert b"\x83" in data or b"\x82" in data
        _refused(data, "EXT")
    finally:
        copyreg.remove_extension("avila_canary", "fire", 0x7A11)
    _refused(b"\x80\x05\x97.", "out-of-band")


def test_reduce_and_newobj_on_non_callables_and_build_are_refused():
    _refused(b"\x80\x02X\x02\x00\x00\x00os)R.", "REDUCE")                               # str as callable
    _refused(b"\x80\x02" + G(b"torch", b"FloatStorage") + b")R.", "storage type")       # storage type called
    _refused(b"\x80\x02]}b.", "BUILD")                                                   # BUILD on a list
    _refused(b"\x80\x02" + G(b"collections", b"OrderedDict") + b")R}X\t\x00\x00\x00__class__Ns" + b"b.", "BUILD")
    _refused(b"\x80\x02]}\x81.", "NEWOBJ")


def test_setitems_on_non_dicts_and_appends_on_non_lists_are_refused():
    # CVE-2026-24747: SETITEM/SETITEMS applied to something that is not a dict
    _refused(b"\x80\x02](K\x00K\x01u.", "SETITEM")
    _refused(b"\x80\x02)K\x00K\x01s.", "SETITEM")
    _refused(b"\x80\x02}(K\x01e.", "APPEND")
    _refused(b"\x80\x02](K\x01K\x02u.", "SETITEM")


def _tensor_pickle(numel=4, size=(4,), stride=(1,), offset=0, pid_kind=b"storage", hooks=b")R") -> bytes:
    def s(x: bytes) -> bytes:
        return b"X" + struct.pack("<I", len(x)) + x
    def tup(xs):
        return b"(" + b"".join(b"J" + struct.pack("<i", v) for v in xs) + b"t"
    return (b"\x80\x02" + G(b"torch._utils", b"_rebuild_tensor_v2") + b"((" + s(pid_kind)
            + G(b"torch", b"FloatStorage") + s(b"0") + s(b"cpu") + b"J" + struct.pack("<i", numel)
            + b"tQ" + b"J" + struct.pack("<i", offset) + tup(size) + tup(stride) + b"\x89"
            + G(b"collections", b"OrderedDict") + hooks + b"tR.")


def test_well_formed_tensor_pickle_loads():
    out = load_torch(_zip_with(_tensor_pickle(), {"0": np.arange(4, dtype="<f4").tobytes()}))
    assert out.tolist() == [0.0, 1.0, 2.0, 3.0]


def test_storage_size_lies_and_out_of_bounds_views_are_refused():
    data = np.arange(4, dtype="<f4").tobytes()
    _refused(_zip_with(_tensor_pickle(numel=8), {"0": data}), "declares 8")        # CVE-2026-24747 shape
    _refused(_zip_with(_tensor_pickle(numel=4), {"0": data[:8]}), "declares 4")
    _refused(_zip_with(_tensor_pickle(size=(5,)), {"0": data}), "reads element 4")
    _refused(_zip_with(_tensor_pickle(size=(2, 2), stride=(3, 1)), {"0": data}), "reads element")
    _refused(_zip_with(_tensor_pickle(offset=3, size=(2,)), {"0": data}), "reads element")
    _refused(_zip_with(_tensor_pickle(size=(-1,)), {"0": data}), "geometry")
    _refused(_zip_with(_tensor_pickle(), {}), "missing")


def test_persistent_ids_that_are_not_storages_and_hooks_are_refused():
    _refused(_zip_with(_tensor_pickle(pid_kind=b"module")), "not a storage reference")
    _refused(b"\x80\x02X\x03\x00\x00\x00abcQ.", "not a storage reference")
    hooks = G(b"collections", b"OrderedDict") + b")R(K\x00K\x01u"  # a non-empty hooks dict
    evil = _tensor_pickle().replace(G(b"collections", b"OrderedDict") + b")RtR.", hooks + b"tR.")
    _refused(_zip_with(evil, {"0": np.zeros(4, "<f4").tobytes()}), "hooks")


def test_legacy_format_goes_through_the_same_checks(tmp_path):
    # CVE-2025-32434 went through the legacy path: every pickle of a legacy file is restricted
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950A86A20F9469CFC6C, 1001,
                                                          {"protocol_version": 1001, "little_endian": True}))
    _refused(head + _evil_pickle(), "allow-list")
    _refused(pickle.dumps(_Fire(), protocol=2), "allow-list")  # magic number position
    _refused(head[:-3], "ended|malformed")


def test_deep_nesting_and_huge_lengths_fail_cleanly():
    deep = b")" + b"\x85" * 200000  # a tuple nested 200000 deep: hashing it would crash CPython
    _refused(b"\x80\x02}" + deep + b"Ns.", "dict key")
    _refused(b"\x80\x02" + G(b"builtins", b"set") + b"(" + deep + b"\x85" + b"tR.", "set|items")
    _refused(b"\x80\x02\x8f(" + deep + b"\x90.", "set item|dict key")
    _refused(b"\x80\x02" + b"(" * 5000 + b".", "nested|STOP")
    _refused(b"\x80\x02\x8d" + struct.pack("<Q", 1 << 62) + b"abc.", "ended early")
    _refused(b"\x80\x02X\xff\xff\xff\xff.", "ended early")
    _refused(b"\x80\x02h\x05.", "memo")


# ------------------------------------------------------------------------------ fuzzing
def _valid_pickles():
    out = []
    for obj in [collections.OrderedDict(a=torch.ones(2), b=torch.arange(3)), {"x": [1, 2.5, "s", None]},
                {"opt": {"state": {0: {"step": torch.tensor(1.0)}}, "param_groups": [{"lr": 0.1, "params": [0]}]}}]:
        buf = io.BytesIO()
        torch.save(obj, buf)
        z = zipfile.ZipFile(io.BytesIO(buf.getvalue()))
        name = [n for n in z.namelist() if n.endswith("data.pkl")][0]
        storages = {n.rsplit("/", 1)[1]: z.read(n) for n in z.namelist() if "/data/" in n}
        out.append((z.read(name), storages))
    out.append((_evil_pickle(2), {}))
    out.append((_evil_pickle(4), {}))
    return out


_VALID = _valid_pickles()
_OPCODES = [bytes([c]) for c in range(256)]
_FRAGMENTS = [G(b"avila_canary", b"fire"), G(b"torch._utils", b"_rebuild_tensor_v2"), G(b"torch", b"FloatStorage"),
              G(b"collections", b"OrderedDict"), b")R", b"\x85R", b"b", b"u", b"s", b"e", b"Q", b"(", b"t", b"o",
              b"i", b"\x81", b"\x93", b"\x82\x01", b"N", b"K\x00", b"X\x01\x00\x00\x00a", b"]", b"}", b"q\x00",
              b"h\x00", b"\x94", b"0", b"1", b"2", b"."]


def _check_clean(data: bytes, storages: dict) -> None:
    try:
        load_torch(_zip_with(data, storages))
    except UnsafeCheckpointError:
        pass
    try:
        RestrictedUnpickler(io.BytesIO(data)).load()
    except UnsafeCheckpointError:
        pass


_FUZZ = settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)


@_FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _check_clean(b"\x80\x02" + data, {})


@_FUZZ
@given(st.lists(st.sampled_from(_FRAGMENTS), max_size=40))
def test_fuzz_opcode_soup(parts):
    _check_clean(b"\x80\x02" + b"".join(parts), {})


@_FUZZ
@given(st.integers(0, len(_VALID) - 1), st.lists(st.tuples(st.integers(0, 10_000), st.sampled_from(["flip", "insert", "delete", "splice"]),
                                                           st.integers(0, 255), st.sampled_from(_FRAGMENTS)),
                                                 min_size=1, max_size=4))
def test_fuzz_mutated_torch_pickles(which, edits):
    data, storages = _VALID[which]
    data = bytearray(data)
    for pos, kind, byte, frag in edits:
        pos %= max(len(data), 1)
        if kind == "flip":
            data[pos] = byte
        elif kind == "insert":
            data[pos:pos] = bytes([byte])
        elif kind == "delete":
            del data[pos]
        else:
            data[pos:pos] = frag
    _check_clean(bytes(data), storages)


def test_load_refuses_evil_torch_files_through_the_public_api(tmp_path):
    p = tmp_path / "evil.pt"
    p.write_bytes(_zip_with(_evil_pickle()).getvalue())
    with pytest.raises(UnsafeCheckpointError):
        am.load(str(p))
    p.write_bytes(_evil_pickle())
    with pytest.raises(UnsafeCheckpointError):
        am.load(str(p))
    assert os.path.exists(p)
