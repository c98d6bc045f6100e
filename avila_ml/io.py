"""Checkpoints: :func:`save` and :func:`load` (``torch.save`` / ``torch.load``), safely.

A checkpoint is a safetensors file written by hand (no dependency), so loading runs no code
(no pickle) and the tensor section can be read by any safetensors reader::

    8 bytes    N, the header length, unsigned little-endian
    N bytes    JSON header, padded with spaces to a multiple of 8 bytes:
               {"<name>": {"dtype": "F32", "shape": [2, 3], "data_offsets": [begin, end]}, ...,
                "__metadata__": {"avila_ml": "<the object tree, a JSON string>",
                                 "format_version": "1",
                                 "checksum": "<sha256 hex of the data section>",
                                 "header_checksum": "<sha256 hex of the header without this entry>"}}
    the rest   the data section: every tensor's bytes, C order, little-endian; offsets are
               relative to its start, contiguous, and cover it exactly (no holes, no overlap)

dtypes: F16 F32 F64 I8 I16 I32 I64 U8 BOOL. The header is written as canonical JSON
(``sort_keys``, no spaces, ASCII); ``header_checksum`` is the sha256 of that canonical JSON
of the whole header with ``header_checksum`` left out of ``__metadata__``.

The object tree is JSON: ``null``, booleans, numbers (an int has no ``.``/exponent, a float
always has one), strings and arrays (Python lists) stand for themselves; every JSON object is
a tagged node with exactly one key::

    {"tuple": [...]}                    {"dict": [[key, value], ...]}   {"odict": [[key, value], ...]}
    {"float": "nan" | "inf" | "-inf"}   {"dtype": "float32"}           {"device": "cuda:0"}
    {"tensor": {"name": ..., "device": "cpu", "requires_grad": false}}
    {"ndarray": name}                   {"numpy_scalar": name}

Tensor names are the path of keys to the tensor (``model.fc.weight``); a tensor object that
appears twice (tied weights) is stored once and comes back as one object.
"""
from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import math
import os
import re
import socket
import struct
import tempfile

import numpy as np

from . import dtypes as _dt
from .backends import backend_of, cuda_is_available, device as _device
from .tensor import Tensor

__all__ = ["save", "load", "CheckpointError", "load_safetensors", "save_safetensors"]

FORMAT_VERSION = "1"
_MAX_HEADER = 100 * 1024 * 1024  # safetensors' own limit
_CODES = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "I8": np.int8, "I16": np.int16,
          "I32": np.int32, "I64": np.int64, "U8": np.uint8, "BOOL": np.bool_}
_CODE_OF = {np.dtype(v): k for k, v in _CODES.items()}
_READ_CHUNK = 64 * 1024 * 1024


class CheckpointError(ValueError, RuntimeError):
    """A file that is not a valid Avila ML checkpoint: truncated, corrupted or foreign.

    Raised by :func:`load`, naming the file and what is wrong with it. It subclasses both
    ``ValueError`` and ``RuntimeError`` (PyTorch raises ``RuntimeError`` for bad files).

    Example:
        >>> import avila_ml as am, tempfile, os
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "empty.ckpt")
        >>> open(path, "wb").close()
        >>> try:
        ...     am.load(path)
        ... except am.io.CheckpointError as e:
        ...     print(str(e).split(": ")[-1])
        file is empty
        >>> tmp.cleanup()
    """


# ---------------------------------------------------------------------------------------
# save
# ---------------------------------------------------------------------------------------

def _where(path: tuple) -> str:
    return "obj" + "".join(f"[{p!r}]" for p in path)


class _Encoder:
    """Object tree -> JSON-able tree + the arrays it references, by name."""

    def __init__(self):
        self.arrays: dict[str, np.ndarray] = {}
        self.names_by_id: dict[int, str] = {}
        self.keep_alive: list = []  # ids stay unique while we hold the objects
        self.open: set[int] = set()

    def _name(self, obj, path: tuple) -> tuple[str, bool]:
        known = self.names_by_id.get(id(obj))
        if known is not None:
            return known, False
        base = ".".join(str(p) for p in path) or "tensor"
        name, k = base, 1
        while name in self.arrays or name == "__metadata__":
            name, k = f"{base}#{k}", k + 1
        self.names_by_id[id(obj)] = name
        self.keep_alive.append(obj)
        return name, True

    def _array(self, obj, path: tuple, what: str) -> str:
        name, new = self._name(obj, path)
        if new:
            a = obj if isinstance(obj, np.ndarray) else np.asarray(obj)
            if a.dtype not in _CODE_OF:
                raise TypeError(f"save: {what} of dtype {a.dtype} at {_where(path)} cannot be stored; "
                                f"supported dtypes: {', '.join(str(np.dtype(v)) for v in _CODES.values())}")
            self.arrays[name] = _little_endian_c(a)
        return name

    def encode(self, obj, path: tuple):
        if obj is None or isinstance(obj, (bool, str)):
            return obj
        if isinstance(obj, int):
            return int(obj)
        if isinstance(obj, float):
            if math.isfinite(obj):
                return float(obj)
            return {"float": "nan" if math.isnan(obj) else ("inf" if obj > 0 else "-inf")}
        if isinstance(obj, Tensor):
            arr = backend_of(obj.array).to_numpy(obj.array)
            name, new = self._name(obj, path)
            if new:
                if arr.dtype not in _CODE_OF:
                    raise TypeError(f"save: tensor of dtype {arr.dtype} at {_where(path)} cannot be stored")
                self.arrays[name] = _little_endian_c(arr)
            return {"tensor": {"name": name, "device": str(obj.device), "requires_grad": bool(obj.requires_grad)}}
        if isinstance(obj, np.ndarray):
            return {"ndarray": self._array(obj, path, "NumPy array")}
        if isinstance(obj, (np.bool_, np.number)):
            return {"numpy_scalar": self._array(np.asarray(obj), path, "NumPy scalar")}
        if isinstance(obj, _dt.dtype):
            return {"dtype": obj.name}
        if isinstance(obj, _device):
            return {"device": str(obj)}
        if isinstance(obj, (list, tuple, dict)):
            if id(obj) in self.open:
                raise ValueError(f"save: the object contains itself (a reference cycle) at {_where(path)}")
            self.open.add(id(obj))
            try:
                if isinstance(obj, list):
                    return [self.encode(v, path + (i,)) for i, v in enumerate(obj)]
                if isinstance(obj, tuple):
                    return {"tuple": [self.encode(v, path + (i,)) for i, v in enumerate(obj)]}
                tag = "odict" if isinstance(obj, collections.OrderedDict) else "dict"
                return {tag: [[self.encode_key(k, path), self.encode(v, path + (k,))] for k, v in obj.items()]}
            finally:
                self.open.discard(id(obj))
        raise TypeError(
            f"save: cannot store an object of type {type(obj).__module__}.{type(obj).__qualname__} at "
            f"{_where(path)}; a checkpoint holds Tensors, NumPy arrays and scalars, None, bool, int, float, "
            "str, dtypes, devices, and lists, tuples and dicts of these"
        )

    def encode_key(self, key, path: tuple):
        if key is None or isinstance(key, (bool, int, float, str)):
            return self.encode(key, path)
        if isinstance(key, tuple):
            return {"tuple": [self.encode_key(k, path) for k in key]}
        raise TypeError(f"save: dict key {key!r} of type {type(key).__name__} in {_where(path)} cannot be stored; "
                        "keys must be None, bool, int, float, str or tuples of these")


def _little_endian_c(a: np.ndarray) -> np.ndarray:
    """C-contiguous little-endian data of ``a``, same shape (``ascontiguousarray`` makes 0-d 1-d)."""
    return np.asarray(a, dtype=a.dtype.newbyteorder("<"), order="C")


def _canonical(header: dict) -> bytes:
    return json.dumps(header, sort_keys=True, separators=(",", ":"), ensure_ascii=True,
                      allow_nan=False).encode("ascii")


def _bytes_of(arr: np.ndarray) -> memoryview:
    return memoryview(arr.reshape(-1).view(np.uint8))


def _serialize(obj) -> tuple[bytes, list[np.ndarray]]:
    """The padded header and the arrays of the data section, in file order."""
    enc = _Encoder()
    tree = enc.encode(obj, ())
    # widest itemsize first keeps every tensor aligned to its itemsize inside the data section
    names = sorted(enc.arrays, key=lambda n: (-enc.arrays[n].itemsize, n))
    header, offset, sha = {}, 0, hashlib.sha256()
    for name in names:
        a = enc.arrays[name]
        header[name] = {"dtype": _CODE_OF[a.dtype], "shape": list(a.shape),
                        "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        sha.update(_bytes_of(a))
    header["__metadata__"] = {
        "avila_ml": json.dumps(tree, separators=(",", ":"), ensure_ascii=True, allow_nan=False),
        "format_version": FORMAT_VERSION,
        "checksum": sha.hexdigest(),
    }
    header["__metadata__"]["header_checksum"] = hashlib.sha256(_canonical(header)).hexdigest()
    text = _canonical(header)
    text += b" " * (-len(text) % 8)
    return text, [enc.arrays[n] for n in names]


def _write_payload(f, header: bytes, arrays: list) -> None:
    """Write the length prefix, the header and the data section to an open binary file."""
    f.write(struct.pack("<Q", len(header)))
    f.write(header)
    for a in arrays:
        if a.nbytes:
            f.write(_bytes_of(a))


def _umask() -> int:
    try:
        with open("/proc/self/status") as st:
            for line in st:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # the only portable way to read it is to set it
    os.umask(mask)
    return mask


def _fsync_dir(directory: str) -> None:
    """Make the rename durable; some platforms/filesystems cannot open or fsync a directory."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _host_tag() -> str:
    """This machine's name, reduced to characters that are safe in a file name."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _temp_prefix(name: str) -> str:
    """``.<name>.<host>.<pid>.`` (then random characters and ``.tmp``): who owns a temporary
    is in its name, so a later save can tell one whose writer died (killed mid-save) from one
    still being written."""
    return f".{name}.{_host_tag()}.{os.getpid()}."


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True  # exists (owned by someone else), or we cannot tell: keep its file
    return True


def _remove_stale_temporaries(directory: str, name: str) -> None:
    """Delete temporaries of earlier saves to ``name`` whose writer (a process on this host)
    is dead. Never touches ``name`` itself, other hosts' temporaries (a shared filesystem:
    their pids mean nothing here) or those of live processes."""
    pattern = re.compile(re.escape(f".{name}.{_host_tag()}.") + r"(\d+)\.[A-Za-z0-9_]+\.tmp")
    try:
        entries = os.listdir(directory)
    except OSError:
        return
    for entry in entries:
        m = pattern.fullmatch(entry)
        if m is None or _pid_alive(int(m.group(1))):
            continue
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(directory, entry))


def save(obj, f) -> None:
    """Save a nested object of tensors, arrays, numbers and strings to a checkpoint file
    (``torch.save``).

    ``obj`` may hold Tensors (and Parameters), NumPy arrays and scalars, ``None``, bool, int,
    float (also nan/inf), str, dtypes, devices, and lists, tuples and dicts (keys: None, bool,
    int, float, str or tuples of them) of these — model, optimizer and scheduler
    ``state_dict()`` s, the epoch, a config. Tensors keep dtype, shape, device and
    ``requires_grad``; anything else raises ``TypeError`` naming where it is.

    ``f`` is a path or an open binary file. Writing to a path is atomic: the bytes go to a
    temporary file in the same directory, which is flushed, ``fsync`` ed and renamed over
    ``f`` (then the directory is ``fsync`` ed), so a crash at any point leaves either the old
    file or the new one, never a mix. The temporary is named ``.<name>.<host>.<pid>.<random>.tmp``;
    a save that was killed leaves it behind, and the next save to the same path on the same
    host removes it (its pid is dead). The format is described in :mod:`avila_ml.io`.

    Math: the data section's sha256 and the header's sha256 are stored, so :func:`load`
    detects any change to the file.

    Example:
        >>> import avila_ml as am, tempfile, os
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "ckpt.safetensors")
        >>> am.save({"w": am.ones(2, 3), "epoch": 7, "lr": [0.1, 0.01]}, path)
        >>> ckpt = am.load(path)
        >>> ckpt["w"].shape, ckpt["epoch"], ckpt["lr"]
        ((2, 3), 7, [0.1, 0.01])
        >>> tmp.cleanup()
    """
    header, arrays = _serialize(obj)
    if hasattr(f, "write"):
        _write_payload(f, header, arrays)
        return
    path = os.fspath(f)
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"save: directory {directory!r} of {path!r} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"save: {path!r} is a directory; give a file path")
    try:
        mode = os.stat(path).st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o666 & ~_umask()
    _remove_stale_temporaries(directory, os.path.basename(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=_temp_prefix(os.path.basename(path)), suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            _write_payload(out, header, arrays)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


# ---------------------------------------------------------------------------------------
# load
# ---------------------------------------------------------------------------------------

def _foreign_hint(head: bytes) -> str:
    if head.startswith(b"PK\x03\x04"):
        return " (it looks like a zip archive, e.g. a file written by torch.save)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return " (it looks like a Python pickle)"
    if head.startswith(b"\x93NUMPY"):
        return " (it looks like a NumPy .npy file)"
    if head.startswith(b"\x89HDF"):
        return " (it looks like an HDF5 file)"
    return ""


def _reject_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def _json(text, what: str, err):
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise err(f"{what} is nested too deeply") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise err(f"{what} is not valid JSON ({e})") from None


def _parse_map_location(map_location):
    """-> a function saved-device-string -> target-device-string."""
    if map_location is None:
        return lambda saved: saved
    if isinstance(map_location, dict):
        try:
            table = {str(_device(k)): str(_device(v)) for k, v in map_location.items()}
        except (TypeError, ValueError) as e:
            raise ValueError(f"load: bad map_location {map_location!r}: {e}") from None
        return lambda saved: table.get(saved, saved)
    if isinstance(map_location, (str, _device)):
        target = str(_device(map_location))
        return lambda saved: target
    raise TypeError(f"load: map_location must be None, a device (string or avila_ml.device) or a dict "
                    f"{{saved device: device}}, got {type(map_location).__name__}")


class _Reader:
    """Validates and reads one checkpoint; every problem becomes a CheckpointError naming the file."""

    def __init__(self, f, name: str, size: int):
        self.f, self.name, self.size = f, name, size

    def error(self, problem: str) -> CheckpointError:
        return CheckpointError(f"load: {self.name}: {problem}")

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.f.read(n)
        if len(data) != n:
            raise self.error(f"file ended early while reading the {what} ({len(data)} of {n} bytes)")
        return data

    def header(self) -> tuple[dict, dict, int]:
        if self.size == 0:
            raise self.error("file is empty")
        if self.size < 8:
            raise self.error(f"file is too short ({self.size} bytes) to hold the 8-byte header length")
        head = self.read_exact(8, "header length")
        n = struct.unpack("<Q", head)[0]
        if n < 2 or n > self.size - 8 or n > _MAX_HEADER:
            raise self.error(f"bad header length {n} for a file of {self.size} bytes; not an Avila ML "
                             f"checkpoint (safetensors layout){_foreign_hint(head)}")
        raw = self.read_exact(n, "header")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise self.error(f"header is not valid UTF-8 JSON ({e}){_foreign_hint(head)}") from None
        header = _json(text, "header", self.error)
        if not isinstance(header, dict):
            raise self.error(f"header is a JSON {type(header).__name__}, expected an object")
        meta = header.get("__metadata__")
        if not isinstance(meta, dict) or not all(isinstance(v, str) for v in meta.values()):
            raise self.error("header has no __metadata__ object of strings; not an Avila ML checkpoint")
        for key in ("avila_ml", "format_version", "checksum", "header_checksum"):
            if key not in meta:
                raise self.error(f"__metadata__ lacks {key!r}; not an Avila ML checkpoint "
                                 "(a safetensors file from another tool?)")
        if meta["format_version"] != FORMAT_VERSION:
            raise self.error(f"format_version {meta['format_version']!r} is not supported (this version "
                             f"reads {FORMAT_VERSION!r})")
        return header, meta, self.size - 8 - n

    def entries(self, header: dict, data_len: int) -> list:
        """Validated (begin, end, name, dtype, shape), sorted by begin, covering the data exactly."""
        out = []
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
                raise self.error(f"tensor {name!r}: entry must have exactly dtype, shape and data_offsets, got {info!r}")
            code, shape, offs = info["dtype"], info["shape"], info["data_offsets"]
            if code not in _CODES:
                raise self.error(f"tensor {name!r}: unknown dtype {code!r}; expected one of {sorted(_CODES)}")
            if not isinstance(shape, list) or not all(type(s) is int and s >= 0 for s in shape):
                raise self.error(f"tensor {name!r}: shape must be a list of non-negative ints, got {shape!r}")
            if (not isinstance(offs, list) or len(offs) != 2 or not all(type(o) is int for o in offs)
                    or not 0 <= offs[0] <= offs[1]):
                raise self.error(f"tensor {name!r}: data_offsets must be [begin, end] with 0 <= begin <= end, got {offs!r}")
            if offs[1] > data_len:
                raise self.error(f"tensor {name!r}: data_offsets {offs} out of bounds of the {data_len}-byte "
                                 "data section (truncated file?)")
            dt = np.dtype(_CODES[code])
            nbytes = math.prod(shape) * dt.itemsize
            if offs[1] - offs[0] != nbytes:
                raise self.error(f"tensor {name!r}: dtype {code} and shape {shape} need {nbytes} bytes but "
                                 f"data_offsets {offs} span {offs[1] - offs[0]}")
            out.append((offs[0], offs[1], name, dt, tuple(shape)))
        out.sort(key=lambda e: (e[0], e[1]))
        pos = 0
        for begin, end, name, _, _ in out:
            if begin < pos:
                raise self.error(f"tensor {name!r}: data_offsets [{begin}, {end}] overlap the previous tensor (ends at {pos})")
            if begin > pos:
                raise self.error(f"data section has a gap of {begin - pos} bytes before tensor {name!r}")
            pos = end
        if pos != data_len:
            raise self.error(f"data section is {data_len} bytes but the tensors cover {pos} (file truncated or "
                             "extended?)")
        return out

    def arrays(self, entries: list, checksum: str) -> dict:
        sha, arrays = hashlib.sha256(), {}
        for begin, end, name, dt, shape in entries:
            arr = np.empty(shape, dtype=dt.newbyteorder("<"))
            view = _bytes_of(arr)
            got = 0
            while got < len(view):
                k = self.f.readinto(view[got: got + _READ_CHUNK])
                if not k:
                    raise self.error(f"file ended early inside tensor {name!r}")
                got += k
            sha.update(view)
            arrays[name] = arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))
        if sha.hexdigest() != checksum:
            raise self.error("checksum mismatch: the data section is corrupted (sha256 "
                             f"{sha.hexdigest()[:16]}... != stored {checksum[:16]}...)")
        return arrays


class _Decoder:
    """JSON tree -> Python objects, with the tensors placed on their target devices."""

    def __init__(self, reader: _Reader, arrays: dict, where_to):
        self.reader, self.arrays, self.where_to = reader, arrays, where_to
        self.made: dict = {}
        self.used: set = set()

    def bad(self, problem: str) -> CheckpointError:
        return self.reader.error(f"object tree: {problem}")

    def array(self, name):
        if not isinstance(name, str) or name not in self.arrays:
            raise self.bad(f"reference to unknown tensor {name!r}")
        self.used.add(name)
        return self.arrays[name]

    def tensor(self, spec):
        if not isinstance(spec, dict) or set(spec) != {"name", "device", "requires_grad"}:
            raise self.bad(f"tensor node must have name, device and requires_grad, got {spec!r}")
        arr = self.array(spec["name"])
        saved, rg = spec["device"], spec["requires_grad"]
        if not isinstance(saved, str) or not isinstance(rg, bool):
            raise self.bad(f"tensor node {spec!r} has a bad device or requires_grad")
        try:
            saved = str(_device(saved))
        except ValueError as e:
            raise self.bad(f"tensor {spec['name']!r}: {e}") from None
        if rg and not _dt.np_is_floating(arr.dtype):
            raise self.bad(f"tensor {spec['name']!r} of dtype {arr.dtype} cannot require grad")
        target = self.where_to(saved)
        key = (spec["name"], target)
        t = self.made.get(key)
        if t is None:
            if _device(target).type == "cuda" and not cuda_is_available():
                raise RuntimeError(
                    f"load: {self.reader.name}: tensor {spec['name']!r} was saved on {saved} and would be "
                    f"loaded onto {target}, but no CUDA device is available; pass map_location='cpu' "
                    "(or a dict such as {'" + saved + "': 'cpu'})")
            from .factories import as_tensor
            t = as_tensor(arr, device=target)
            if rg:
                t.requires_grad_(True)
            self.made[key] = t
        return t

    def key(self, node, depth: int):
        k = self.decode(node, depth)
        try:
            hash(k)
        except TypeError:
            raise self.bad(f"dict key {node!r} is not hashable") from None
        return k

    def decode(self, node, depth: int = 0):
        if depth > 900:
            raise self.bad("nested too deeply")
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, depth + 1) for v in node]
        if not isinstance(node, dict) or len(node) != 1:
            raise self.bad(f"expected a tagged node (an object with one key), got {str(node)[:80]}")
        ((tag, val),) = node.items()
        if tag == "tuple" and isinstance(val, list):
            return tuple(self.decode(v, depth + 1) for v in val)
        if tag in ("dict", "odict") and isinstance(val, list):
            out = collections.OrderedDict() if tag == "odict" else {}
            for pair in val:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise self.bad(f"{tag} entries must be [key, value] pairs, got {str(pair)[:80]}")
                out[self.key(pair[0], depth + 1)] = self.decode(pair[1], depth + 1)
            return out
        if tag == "float" and val in ("nan", "inf", "-inf"):
            return float(val)
        if tag == "tensor":
            return self.tensor(val)
        if tag == "ndarray":
            return self.array(val)
        if tag == "numpy_scalar":
            a = self.array(val)
            if a.ndim != 0:
                raise self.bad(f"numpy_scalar {val!r} has shape {a.shape}, expected ()")
            return a[()]
        if tag == "dtype" and isinstance(val, str) and val in _dt._NAMES:
            return _dt._NAMES[val]
        if tag == "device" and isinstance(val, str):
            try:
                return _device(val)
            except ValueError as e:
                raise self.bad(str(e)) from None
        raise self.bad(f"unknown node {{{tag!r}: {str(val)[:60]}}}")


def load(f, map_location=None, weights_only: bool = True):
    """Load an object saved by :func:`save` (``torch.load``).

    Loading parses JSON and copies raw bytes into arrays; it never runs code (no pickle), so a
    checkpoint from an untrusted source is safe to open. Files from other tools are
    recognised and read the same safe way: a ``torch.save`` file (zip or legacy; through
    :func:`avila_ml.torch_format.load_torch`, whose unpickler runs no code) and a plain
    ``.safetensors`` file (Hugging Face weights; :func:`load_safetensors`). ``weights_only``
    is accepted for PyTorch compatibility and changes nothing: loading is always weights-only
    safe.

    Every check runs before anything is returned: the header length and JSON, each tensor's
    dtype, shape and offsets (in bounds, no overlap, no gaps, the data section covered
    exactly), the sha256 of the header and of the data. A truncated, corrupted or foreign file
    raises :class:`CheckpointError` naming the file and the problem.

    ``map_location`` chooses where tensors go: ``None`` (the device each was saved from),
    a device (``"cpu"``, ``"cuda"``, ``"cuda:1"``, :class:`avila_ml.device`) for all of them, or
    a dict ``{saved device: device}`` (e.g. ``{"cuda:1": "cuda:0"}``; devices not in it stay).
    NumPy arrays always load as NumPy arrays. Parameters come back as plain tensors with
    ``requires_grad`` kept (``load_state_dict`` copies them into the parameters).

    Math: returns ``obj`` such that ``save(obj)`` wrote the file, bit for bit for every array.

    Example:
        >>> import avila_ml as am, tempfile, os
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "model.safetensors")
        >>> w = am.randn(3, requires_grad=True)
        >>> am.save({"w": w, "step": (1, 2.5, None)}, path)
        >>> out = am.load(path, map_location="cpu")
        >>> bool((out["w"] == w).all()), out["w"].requires_grad, out["step"]
        (True, True, (1, 2.5, None))
        >>> tmp.cleanup()
    """
    where_to = _parse_map_location(map_location)
    kind = _sniff(f)
    if kind == "torch":
        from .torch_format import load_torch
        return load_torch(f, map_location)
    if kind == "safetensors":
        return load_safetensors(f, map_location)
    return _with_stream(f, _load_from, where_to)


def _with_stream(f, reader, where_to):
    """``reader(stream, name, bytes left, where_to)`` on an open file object or a path."""
    if hasattr(f, "read"):
        name = repr(getattr(f, "name", f"<{type(f).__name__}>"))
        start = f.tell()
        f.seek(0, os.SEEK_END)
        size = f.tell() - start
        f.seek(start)
        return reader(f, name, size, where_to)
    path = os.fspath(f)
    with open(path, "rb") as fh:
        return reader(fh, repr(path), os.fstat(fh.fileno()).st_size, where_to)


def _load_from(f, name: str, size: int, where_to):
    reader = _Reader(f, name, size)
    header, meta, data_len = reader.header()
    entries = reader.entries(header, data_len)
    stripped = dict(header)
    stripped["__metadata__"] = {k: v for k, v in meta.items() if k != "header_checksum"}
    if hashlib.sha256(_canonical(stripped)).hexdigest() != meta["header_checksum"]:
        raise reader.error("header checksum mismatch: the header is corrupted")
    arrays = reader.arrays(entries, meta["checksum"])
    tree = _json(meta["avila_ml"], "object tree (__metadata__.avila_ml)", reader.error)
    decoder = _Decoder(reader, arrays, where_to)
    obj = decoder.decode(tree)
    unused = set(arrays) - decoder.used
    if unused:
        raise reader.error(f"tensors {sorted(unused)[:5]} are not referenced by the object tree")
    return obj


# ---------------------------------------------------------------------------------------
# other formats: sniffing, plain safetensors
# ---------------------------------------------------------------------------------------

def _sniff(f) -> str:
    """"torch" (zip or pickle), "safetensors" (a safetensors file not written by :func:`save`)
    or "avila" (ours, or unrecognisable: the checkpoint reader reports what is wrong)."""
    if hasattr(f, "read"):
        start = f.tell()
        try:
            return _classify(f.read(8), f.read)
        finally:
            f.seek(start)
    try:
        with open(os.fspath(f), "rb") as fh:
            return _classify(fh.read(8), fh.read)
    except OSError:
        return "avila"  # the regular path raises the proper error


def _classify(head: bytes, read_more) -> str:
    if head.startswith(b"PK\x03\x04") or (head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05")):
        return "torch"
    if len(head) == 8:
        n = struct.unpack("<Q", head)[0]
        if 2 <= n <= _MAX_HEADER:
            raw = read_more(min(n, _MAX_HEADER))
            try:
                header = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError):
                return "avila"
            if isinstance(header, dict):
                meta = header.get("__metadata__")
                # any one of our metadata keys marks the file as ours, so a corrupted checkpoint
                # is reported as corrupted rather than read as a plain safetensors file
                ours = isinstance(meta, dict) and any(k in meta for k in _OUR_KEYS)
                if not ours:
                    return "safetensors"
    return "avila"


_OUR_KEYS = ("avila_ml", "format_version", "checksum", "header_checksum")


def load_safetensors(f, map_location=None) -> dict:
    """Read a plain ``.safetensors`` file (e.g. Hugging Face weights) as a dict of tensors
    (``safetensors.torch.load_file``).

    Every entry is checked as in :func:`load` (dtype, shape, offsets in bounds, no overlap,
    no gaps); dtypes F16/F32/F64/I8/I16/I32/I64/U8/BOOL load as they are and BF16 is widened
    to float32 (Avila ML has no bfloat16). The ``__metadata__`` strings are not returned.
    ``map_location`` is as in :func:`load` (default: the CPU).

    Math: none; bytes are copied into arrays.

    Example:
        >>> import avila_ml as am, tempfile, os
        >>> tmp = tempfile.TemporaryDirectory()
        >>> path = os.path.join(tmp.name, "model.safetensors")
        >>> am.io.save_safetensors({"w": am.ones(2), "n": am.tensor([3])}, path)
        >>> am.io.load_safetensors(path)
        {'n': tensor([3]), 'w': tensor([1., 1.])}
        >>> tmp.cleanup()
    """
    where_to = _parse_map_location(map_location)
    return _with_stream(f, _load_plain, where_to)


def _load_plain(f, name, size, where_to) -> dict:
    reader = _Reader(f, name, size)
    if size < 8:
        raise reader.error(f"file is too short ({size} bytes) for a safetensors header")
    n = struct.unpack("<Q", reader.read_exact(8, "header length"))[0]
    if n < 2 or n > size - 8 or n > _MAX_HEADER:
        raise reader.error(f"bad header length {n} for a file of {size} bytes; not a safetensors file")
    header = _json(reader.read_exact(n, "header"), "header", reader.error)
    if not isinstance(header, dict):
        raise reader.error(f"header is a JSON {type(header).__name__}, expected an object")
    meta = header.get("__metadata__")
    if meta is not None and not (isinstance(meta, dict) and all(isinstance(v, str) for v in meta.values())):
        raise reader.error("__metadata__ must be an object of strings")
    bf16 = {k for k, v in header.items() if k != "__metadata__" and isinstance(v, dict) and v.get("dtype") == "BF16"}
    # BF16 entries are validated as 2-byte I16 and widened after reading
    checked = {k: (dict(v, dtype="I16") if k in bf16 else v) for k, v in header.items()}
    entries = reader.entries(checked, size - 8 - n)
    out = {}
    for begin, end, key, dt, shape in entries:
        arr = np.empty(shape, dtype=dt.newbyteorder("<"))
        view = _bytes_of(arr)
        if f.readinto(view) != len(view):
            raise reader.error(f"file ended early inside tensor {key!r}")
        if key in bf16:
            arr = (arr.view("<u2").astype(np.uint32) << 16).view(np.float32)
        elif not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        target = where_to("cpu")
        if _device(target).type == "cuda" and not cuda_is_available():
            raise RuntimeError(f"load_safetensors: {name}: map_location={target} but no CUDA device is available")
        from .factories import as_tensor
        out[key] = as_tensor(arr, device=target)
    return dict(sorted(out.items()))


def save_safetensors(tensors: dict, f, metadata: dict | None = None) -> None:
    """Write a flat ``{name: tensor}`` dict as a plain ``.safetensors`` file, readable by
    ``safetensors.torch.load_file`` / ``safetensors.numpy.load_file`` and Hugging Face tools
    (``safetensors.torch.save_file``).

    Tensors are written contiguous, little-endian, in sorted name order; ``metadata`` (a
    dict of strings) goes to ``__metadata__``. Nested objects need :func:`save` (our format)
    or :func:`avila_ml.torch_format.save_torch`; tensors sharing memory are written once each
    (safetensors has no aliasing).

    Math: none; ``load_safetensors(save_safetensors(d)) == d`` bit for bit.

    Example:
        >>> import avila_ml as am, io
        >>> buf = io.BytesIO()
        >>> am.io.save_safetensors({"w": am.zeros(2)}, buf, metadata={"format": "pt"})
        >>> _ = buf.seek(0); am.io.load_safetensors(buf)["w"]
        tensor([0., 0.])
    """
    if not isinstance(tensors, dict) or not all(isinstance(k, str) and isinstance(v, Tensor) for k, v in tensors.items()):
        raise TypeError("save_safetensors: expected a flat dict {str: Tensor}")
    if metadata is not None and not (isinstance(metadata, dict) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in metadata.items())):
        raise TypeError("save_safetensors: metadata must be a dict of strings")
    header, arrays, pos = {}, [], 0
    for key in sorted(tensors):
        arr = _little_endian_c(tensors[key].detach().cpu().array)
        if arr.dtype not in _CODE_OF:
            raise TypeError(f"save_safetensors: tensor {key!r} has unsupported dtype {arr.dtype}")
        header[key] = {"dtype": _CODE_OF[arr.dtype], "shape": list(arr.shape), "data_offsets": [pos, pos + arr.nbytes]}
        pos += arr.nbytes
        arrays.append(arr)
    if metadata:
        header["__metadata__"] = dict(metadata)
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    out = f if hasattr(f, "write") else open(os.fspath(f), "wb")
    try:
        out.write(struct.pack("<Q", len(text)))
        out.write(text)
        for arr in arrays:
            out.write(_bytes_of(arr))
    finally:
        if out is not f:
            out.close()
