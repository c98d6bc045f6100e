"""avila_ml.save / avila_ml.load: round trips, the safetensors layout (read and written by an
independent implementation here), atomic saves, map_location, and rejection of bad files."""
import collections
import hashlib
import io
import json
import os
import pickle
import struct
import zipfile

import numpy as np
import pytest
import torch

import avila_ml as am
from avila_ml.io import CheckpointError

DTYPES = [am.float16, am.float32, am.float64, am.int8, am.int16, am.int32, am.int64, am.uint8, am.bool]
SAFETENSORS_CODES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8,
                     "I16": np.int16, "I32": np.int32, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_}


# -- an independent reader and writer of the documented layout ------------------------------

def read_safetensors(path):
    """The header and every tensor, read with struct + json + numpy.frombuffer only."""
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8:8 + n])
    data = raw[8 + n:]
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        dt = np.dtype(SAFETENSORS_CODES[info["dtype"]]).newbyteorder("<")
        tensors[name] = np.frombuffer(data[b:e], dtype=dt).reshape(info["shape"])
    return n, header, data, tensors


def canonical(header):
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def write_checkpoint(path, tensors, tree, *, metadata=None, fix_header=None, data=None, header_len=None):
    """Write a checkpoint as the io module's docstring describes it (or break it on purpose)."""
    header, blob = {}, b""
    for name, arr in tensors.items():
        arr = np.ascontiguousarray(arr)
        header[name] = {"dtype": {v: k for k, v in SAFETENSORS_CODES.items()}[arr.dtype.type],
                        "shape": list(arr.shape), "data_offsets": [len(blob), len(blob) + arr.nbytes]}
        blob += arr.astype(arr.dtype.newbyteorder("<")).tobytes()
    if data is not None:
        blob = data
    meta = {"avila_ml": json.dumps(tree), "format_version": "1", "checksum": hashlib.sha256(blob).hexdigest()}
    meta.update(metadata or {})
    header["__metadata__"] = meta
    if fix_header:
        fix_header(header)
    header["__metadata__"]["header_checksum"] = hashlib.sha256(canonical(header)).hexdigest()
    text = canonical(header)
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text) if header_len is None else header_len) + text + blob)
    return path


def tensor_node(name, device="cpu", requires_grad=False):
    return {"tensor": {"name": name, "device": device, "requires_grad": requires_grad}}


# -- helpers ---------------------------------------------------------------------------------

def assert_same(a, b, path="obj"):
    """Exact equality, including dtype, device, requires_grad, container types and NaNs."""
    assert type(a) is type(b) or (isinstance(a, am.Tensor) and isinstance(b, am.Tensor)), \
        f"{path}: {type(a).__name__} vs {type(b).__name__}"
    if isinstance(a, am.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and a.device == b.device, path
        assert a.requires_grad == b.requires_grad, path
        assert np.asarray(a.detach().cpu()).tobytes() == np.asarray(b.detach().cpu()).tobytes(), path
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes(), path
    elif isinstance(a, np.generic):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), path
    elif isinstance(a, dict):
        assert list(a) == list(b), path
        for k in a:
            assert_same(a[k], b[k], f"{path}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), path
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{path}[{i}]")
    elif isinstance(a, float) and a != a:
        assert b != b, path
    else:
        assert a == b, path


def every_dtype(device):
    rng = np.random.default_rng(0)
    out = {}
    for dt in DTYPES:
        if dt is am.bool:
            arr = rng.random((3, 4)) > 0.5
        elif dt.is_floating_point:
            arr = (rng.standard_normal((3, 4)) * 100)
        else:
            info = np.iinfo(dt.np)
            arr = rng.integers(info.min, info.max, size=(3, 4), endpoint=True)
        out[dt.name] = am.tensor(arr.astype(dt.np), device=device)
    return out


def nested(device):
    w = am.randn(4, 3, device=device, requires_grad=True)
    base = am.arange(24.0, dtype=am.float64, device=device).reshape(4, 6)
    return {
        "model": collections.OrderedDict([("fc.weight", w), ("fc.bias", am.zeros(4, device=device)),
                                          ("bn.num_batches_tracked", am.tensor(5, device=device))]),
        "optimizer": {"state": {0: {"step": 10, "exp_avg": am.ones(4, 3, device=device)}},
                      "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0], "amsgrad": False,
                                        "weight_decay": 0.0, "name": None}]},
        "scheduler": {"last_epoch": 3, "_last_lr": [0.1], "base_lrs": [0.1]},
        "epoch": 7, "best": float("inf"), "worst": float("-inf"), "undefined": float("nan"),
        "huge": 2 ** 100, "negative": -3, "note": "ünïcode ✓ \"quoted\" \\ \n", "flag": True,
        "dtypes": every_dtype(device),
        "zero_d": am.tensor(3.5, device=device), "empty": am.zeros(0, 5, device=device),
        "non_contiguous": base.T, "sliced": base[:, ::3],
        "numpy": np.arange(12, dtype=np.int32).reshape(3, 4)[:, 1::2], "np_scalar": np.float16(1.5),
        "np_bool": np.bool_(True),
        "tuple_keys": {(1, "a"): 1, 2.5: "x", None: [], False: {}, "": ()},
        "meta": [am.float16, am.device("cpu")],
        "tied": w,
    }


# -- round trips -------------------------------------------------------------------------------

def test_round_trip_of_a_nested_object(tmp_path, device):
    obj = nested(device)
    path = tmp_path / "ckpt.safetensors"
    am.save(obj, path)
    out = am.load(path)
    assert_same(obj, out)
    assert out["tied"] is out["model"]["fc.weight"]  # one tensor object stays one object
    assert isinstance(out["model"], collections.OrderedDict) and type(out["tuple_keys"]) is dict
    assert out["non_contiguous"].is_contiguous()


def test_parameters_come_back_as_plain_tensors(tmp_path):
    p = am.nn.Parameter(am.randn(2, 2))
    am.save({"p": p, "frozen": am.nn.Parameter(am.ones(2), requires_grad=False)}, tmp_path / "p.ckpt")
    out = am.load(tmp_path / "p.ckpt")
    assert type(out["p"]) is am.Tensor and out["p"].requires_grad and out["p"].is_leaf
    assert not out["frozen"].requires_grad
    np.testing.assert_array_equal(out["p"].detach().numpy(), p.detach().numpy())


def test_non_leaf_tensor_is_saved_as_data(tmp_path):
    x = am.ones(3, requires_grad=True)
    y = x * 2
    am.save([y], tmp_path / "y.ckpt")
    (out,) = am.load(tmp_path / "y.ckpt")
    assert out.is_leaf and out.requires_grad and out.tolist() == [2.0, 2.0, 2.0]


def test_top_level_tensor_and_file_objects(tmp_path):
    t = am.arange(5)
    am.save(t, tmp_path / "t.ckpt")
    assert_same(am.load(str(tmp_path / "t.ckpt")), t)
    buf = io.BytesIO()
    am.save({"t": t, "s": "x"}, buf)
    buf.seek(0)
    assert_same(am.load(buf), {"t": t, "s": "x"})
    with open(tmp_path / "t.ckpt", "rb") as f:
        assert_same(am.load(f), t)


def test_a_model_state_dict_round_trip(tmp_path):
    model = am.nn.Linear(3, 2) if hasattr(am.nn, "Linear") else None
    if model is None or not hasattr(model, "state_dict"):
        pytest.skip("nn.Linear.state_dict not available yet")
    sd = model.state_dict()
    am.save({"model": sd, "epoch": 1}, tmp_path / "m.ckpt")
    out = am.load(tmp_path / "m.ckpt")
    assert list(out["model"]) == list(sd)
    for k in sd:
        np.testing.assert_array_equal(np.asarray(out["model"][k].detach()), np.asarray(sd[k].detach()))


# -- the layout, checked independently ------------------------------------------------------

def test_layout_is_readable_by_an_independent_safetensors_reader(tmp_path):
    obj = nested("cpu")
    am.save(obj, tmp_path / "x.safetensors")
    n, header, data, tensors = read_safetensors(tmp_path / "x.safetensors")
    assert (8 + n) % 8 == 0 and header  # padded header, as safetensors writes it
    meta = header["__metadata__"]
    assert set(meta) == {"avila_ml", "format_version", "checksum", "header_checksum"}
    assert all(isinstance(v, str) for v in meta.values()) and meta["format_version"] == "1"
    assert meta["checksum"] == hashlib.sha256(data).hexdigest()
    stripped = {**header, "__metadata__": {k: v for k, v in meta.items() if k != "header_checksum"}}
    assert meta["header_checksum"] == hashlib.sha256(canonical(stripped)).hexdigest()
    spans = sorted(info["data_offsets"] for k, info in header.items() if k != "__metadata__")
    assert spans[0][0] == 0 and spans[-1][1] == len(data)
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))  # contiguous, no holes
    # every tensor, by its path name
    for dt in DTYPES:
        np.testing.assert_array_equal(tensors[f"dtypes.{dt.name}"], obj["dtypes"][dt.name].numpy())
    np.testing.assert_array_equal(tensors["non_contiguous"], obj["non_contiguous"].numpy())
    np.testing.assert_array_equal(tensors["numpy"], obj["numpy"])
    assert tensors["zero_d"].shape == () and tensors["empty"].shape == (0, 5)
    assert "tied" not in tensors  # stored once, under its first path
    # and the tree references them as documented
    tree = json.loads(meta["avila_ml"])
    assert tree["dict"][0][0] == "model"
    assert tensor_node("model.fc.weight", requires_grad=True) in [v for _, v in tree["dict"][0][1]["odict"]]
    # tensors are aligned to their itemsize inside the data section
    for name, info in header.items():
        if name != "__metadata__":
            assert info["data_offsets"][0] % np.dtype(SAFETENSORS_CODES[info["dtype"]]).itemsize == 0


def test_files_from_an_independent_writer_load(tmp_path):
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    tree = {"dict": [["w", tensor_node("w", requires_grad=True)], ["n", 3], ["t", {"tuple": [1.5, "s"]}]]}
    out = am.load(write_checkpoint(tmp_path / "ext.ckpt", {"w": x}, tree))
    assert out["n"] == 3 and out["t"] == (1.5, "s") and out["w"].requires_grad
    np.testing.assert_array_equal(out["w"].detach().numpy(), x)


# -- map_location ------------------------------------------------------------------------------

def test_map_location(tmp_path, device):
    path = tmp_path / "dev.ckpt"
    am.save({"t": am.ones(2, device=device), "a": np.ones(2)}, path)
    for loc in ("cpu", am.device("cpu"), {device: "cpu"}, {"cuda:7": "cpu", device: "cpu"}):
        out = am.load(path, map_location=loc)
        assert out["t"].device == "cpu" and isinstance(out["a"], np.ndarray)
    assert am.load(path)["t"].device == device
    assert am.load(path, map_location=device)["t"].device == device
    assert am.load(path, map_location={"cuda:5": "cpu"})["t"].device == device  # not in the dict: stays
    with pytest.raises(TypeError, match="map_location"):
        am.load(path, map_location=lambda storage, loc: storage)
    with pytest.raises(ValueError, match="map_location"):
        am.load(path, map_location={"gpu": "cpu"})


def test_map_location_from_another_gpu(tmp_path):
    path = write_checkpoint(tmp_path / "gpu1.ckpt", {"w": np.ones(3, np.float32)},
                            {"dict": [["w", tensor_node("w", device="cuda:1")]]})
    out = am.load(path, map_location={"cuda:1": "cpu"})
    assert out["w"].device == "cpu" and out["w"].tolist() == [1.0, 1.0, 1.0]
    if am.cuda.is_available():
        assert am.load(path, map_location={"cuda:1": "cuda:0"})["w"].device == "cuda:0"
    else:
        with pytest.raises(RuntimeError, match="saved on cuda:1.*no CUDA device.*map_location='cpu'"):
            am.load(path)


# -- saving: what is refused, atomicity ----------------------------------------------------------

@pytest.mark.parametrize("obj, exc, match", [
    ({"f": lambda: 1}, TypeError, r"type builtins.function at obj\['f'\]"),
    ({"s": {1, 2}}, TypeError, r"builtins.set at obj\['s'\]"),
    ([1, object()], TypeError, r"at obj\[1\]"),
    ({"c": 1 + 2j}, TypeError, "complex"),
    ({frozenset(): 1}, TypeError, "dict key"),
    ({"a": np.array(["x"])}, TypeError, "dtype <U1"),
    ({"a": np.ones(2, np.uint16)}, TypeError, "dtype uint16"),
])
def test_save_rejects_what_it_cannot_store(tmp_path, obj, exc, match):
    with pytest.raises(exc, match=match):
        am.save(obj, tmp_path / "bad.ckpt")
    assert not os.listdir(tmp_path)  # nothing written, not even a temp file


def test_save_rejects_cycles_and_bad_paths(tmp_path):
    loop = []
    loop.append(loop)
    with pytest.raises(ValueError, match="reference cycle"):
        am.save(loop, tmp_path / "loop.ckpt")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        am.save({}, tmp_path / "missing" / "x.ckpt")
    with pytest.raises(IsADirectoryError):
        am.save({}, tmp_path)
    shared = [1]
    am.save({"a": shared, "b": shared}, tmp_path / "dag.ckpt")  # a shared list is not a cycle
    assert am.load(tmp_path / "dag.ckpt") == {"a": [1], "b": [1]}


def test_a_crash_mid_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.safetensors"
    am.save({"epoch": 1, "w": am.zeros(1000)}, path)
    before = path.read_bytes()

    def crash_after_half(f, header, arrays):
        f.write(struct.pack("<Q", len(header)) + header[: len(header) // 2])
        raise KeyboardInterrupt("power cut")

    monkeypatch.setattr(am.io, "_write_payload", crash_after_half)
    with pytest.raises(KeyboardInterrupt):
        am.save({"epoch": 2, "w": am.ones(1000)}, path)
    monkeypatch.undo()
    assert path.read_bytes() == before and am.load(path)["epoch"] == 1
    assert os.listdir(tmp_path) == ["ckpt.safetensors"]  # the temp file is gone

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(am.io.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        am.save({"epoch": 3}, path)
    monkeypatch.undo()
    assert am.load(path)["epoch"] == 1 and os.listdir(tmp_path) == ["ckpt.safetensors"]


def test_save_fsyncs_file_and_directory_and_keeps_mode(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(am.io.os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")), real(fd)))
    path = tmp_path / "m.ckpt"
    am.save({"x": 1}, path)
    assert str(tmp_path) in synced and any(s.endswith(".tmp") for s in synced)
    umask = os.umask(0)
    os.umask(umask)
    assert os.stat(path).st_mode & 0o777 == 0o666 & ~umask
    os.chmod(path, 0o600)
    am.save({"x": 2}, path)
    assert os.stat(path).st_mode & 0o777 == 0o600  # an existing file keeps its mode


# -- loading: never pickle, reject bad files ------------------------------------------------------

def test_load_never_unpickles(tmp_path, monkeypatch):
    path = tmp_path / "safe.ckpt"
    am.save(nested("cpu"), path)

    def forbidden(*a, **k):
        raise AssertionError("load called pickle")

    for name in ("loads", "load", "Unpickler"):
        monkeypatch.setattr(pickle, name, forbidden)
    monkeypatch.setattr(np, "load", forbidden)
    assert am.load(path)["epoch"] == 7


@pytest.fixture
def good_file(tmp_path):
    path = tmp_path / "good.ckpt"
    am.save({"w": am.arange(6.0).reshape(2, 3), "b": am.tensor([True, False]), "n": 7}, path)
    return path


def _rejection(raw: bytes):
    """The CheckpointError message for these bytes, or None if they loaded."""
    try:
        am.load(io.BytesIO(raw))
    except CheckpointError as e:
        return str(e)
    return None


def test_every_truncation_is_rejected(good_file, tmp_path):
    raw = good_file.read_bytes()
    accepted = [k for k in range(len(raw)) if _rejection(raw[:k]) is None]
    assert not accepted, f"truncated to {accepted} bytes and still loaded"
    bad = tmp_path / "cut.ckpt"
    bad.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        am.load(bad)


def test_every_single_bit_flip_is_rejected(good_file):
    raw = bytearray(good_file.read_bytes())
    n_header = 8 + struct.unpack("<Q", raw[:8])[0]
    assert len(raw) > n_header  # there is a data section to flip too
    messages, accepted = [], []
    for i in range(len(raw)):
        for bit in range(8):
            raw[i] ^= 1 << bit
            msg = _rejection(bytes(raw))
            raw[i] ^= 1 << bit
            if msg is None:
                accepted.append((i, bit))
            else:
                messages.append(msg)
    assert not accepted, f"bit flips at (byte, bit) {accepted[:10]} loaded without an error"
    assert any("checksum mismatch: the data section" in m for m in messages)
    assert any("header checksum mismatch" in m for m in messages)


@pytest.mark.parametrize("content, match", [
    (b"", "file is empty"),
    (b"\x01\x02\x03", "too short"),
    (struct.pack("<Q", 0), "bad header length 0"),
    (struct.pack("<Q", 10 ** 12) + b"{}", "bad header length 1000000000000"),
    (struct.pack("<Q", 4) + b"{nop", "not valid JSON"),
    (struct.pack("<Q", 2) + b"\xff\xfe", "not valid UTF-8"),
    (struct.pack("<Q", 2) + b"[]", "JSON list, expected an object"),
    (struct.pack("<Q", 12) + b'{"w": [1,2]}', "tensor 'w': entry must have"),  # read as plain safetensors
    (struct.pack("<Q", 3) + b"NaN", "not valid JSON"),
    (b"\x80\x04\x95" + b"\x00" * 20, "looks like a Python pickle"),
    (b"\x93NUMPY\x01\x00" + b"\x00" * 20, "NumPy .npy"),
])
def test_malformed_files_are_rejected(tmp_path, content, match):
    path = tmp_path / "bad.ckpt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match=match) as info:
        am.load(path)
    assert "bad.ckpt" in str(info.value)


def test_header_without_our_metadata_is_a_plain_safetensors_file(tmp_path):
    # a header with no __metadata__ is a valid (here: empty) safetensors file, as
    # safetensors.torch.load_file reads it; such files load as a dict of tensors
    path = tmp_path / "empty.safetensors"
    path.write_bytes(struct.pack("<Q", 2) + b"{}")
    assert am.load(path) == {}


def test_random_bytes_are_rejected(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "random.bin"
    for size in (1, 7, 8, 9, 64, 1000, 100_000):
        for _ in range(5):
            path.write_bytes(rng.integers(0, 256, size, dtype=np.uint8).tobytes())
            with pytest.raises(CheckpointError):
                am.load(path)
    # random bytes behind a plausible header length
    path.write_bytes(struct.pack("<Q", 100) + rng.integers(0, 256, 500, dtype=np.uint8).tobytes())
    with pytest.raises(CheckpointError):
        am.load(path)


def test_foreign_files_are_rejected(tmp_path):
    z = tmp_path / "archive.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("data.pkl", b"x" * 100)
    with pytest.raises(CheckpointError, match="zip archive"):
        am.load(z)
    t = tmp_path / "torch.pt"
    torch.save({"w": torch.ones(3)}, t)
    assert am.load(t)["w"].tolist() == [1.0, 1.0, 1.0]  # torch.save files are read (tests/test_torch_format.py)
    p = tmp_path / "obj.pkl"
    p.write_bytes(pickle.dumps({"w": np.ones(3)}))
    with pytest.raises(CheckpointError, match="pickle"):
        am.load(p)
    n = tmp_path / "arr.npy"
    np.save(n, np.ones(3))
    with pytest.raises(CheckpointError, match="npy"):
        am.load(n)
    j = tmp_path / "cfg.json"
    j.write_text(json.dumps({"lr": 0.1}) * 10)
    with pytest.raises(CheckpointError):
        am.load(j)


def _fix(key, field, value):
    def fix(header):
        header[key][field] = value
    return fix


@pytest.mark.parametrize("kw, match", [
    (dict(fix_header=_fix("a", "data_offsets", [0, 4000])), "out of bounds"),
    (dict(fix_header=_fix("b", "data_offsets", [8, 24])), "overlap"),
    (dict(fix_header=_fix("a", "shape", [3])), "need 12 bytes but data_offsets"),
    (dict(fix_header=_fix("a", "dtype", "F64")), "need 32 bytes"),
    (dict(fix_header=_fix("a", "dtype", "C64")), "unknown dtype 'C64'"),
    (dict(fix_header=_fix("a", "shape", [-4])), "non-negative ints"),
    (dict(fix_header=_fix("a", "data_offsets", [4, 0])), "0 <= begin <= end"),
    (dict(fix_header=_fix("a", "extra", 1)), "exactly dtype, shape and data_offsets"),
    (dict(data=b"\x00" * 40), "cover 32"),
    (dict(metadata={"format_version": "2"}), "format_version '2'"),
    (dict(metadata={"checksum": "0" * 64}), "checksum mismatch"),
    (dict(fix_header=lambda h: h["__metadata__"].pop("avila_ml")), "lacks 'avila_ml'"),
    (dict(fix_header=lambda h: h["__metadata__"].update(avila_ml="{not json")), "object tree.*not valid JSON"),
    (dict(fix_header=lambda h: h["__metadata__"].update(avila_ml='{"tensor": {"name": "zz", "device": "cpu", '
                                                                '"requires_grad": false}}')), "unknown tensor 'zz'"),
    (dict(fix_header=lambda h: h["__metadata__"].update(avila_ml='{"set": [1]}')), "unknown node"),
    (dict(fix_header=lambda h: h["__metadata__"].update(avila_ml='{"dict": [[[1], 2]]}')), "not hashable"),
    (dict(fix_header=lambda h: h["__metadata__"].update(avila_ml='[' * 5000 + ']' * 5000)), "nested too deeply"),
    (dict(fix_header=lambda h: h["__metadata__"].update(
        avila_ml=json.dumps({"dict": [["a", tensor_node("a")]]}))), "not referenced"),
    (dict(header_len=16), "not valid JSON"),
])
def test_structurally_invalid_files_are_rejected(tmp_path, kw, match):
    tensors = {"a": np.ones((2, 2), np.float32), "b": np.zeros(2, np.float64)}
    tree = {"dict": [["a", tensor_node("a")], ["b", tensor_node("b")]]}
    path = write_checkpoint(tmp_path / "crafted.ckpt", tensors, tree, **kw)
    with pytest.raises(CheckpointError, match=match):
        am.load(path)


def test_crafted_requires_grad_on_integers_is_rejected(tmp_path):
    path = write_checkpoint(tmp_path / "int.ckpt", {"a": np.ones(2, np.int64)},
                            tensor_node("a", requires_grad=True))
    with pytest.raises(CheckpointError, match="cannot require grad"):
        am.load(path)
