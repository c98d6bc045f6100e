"""Read and write PyTorch checkpoints (``torch.save`` files) without PyTorch and without running
any code from the file.

A ``torch.save`` file is a pickle (the object tree) plus raw storage bytes: in a zip archive
(``<name>/data.pkl``, ``<name>/data/<key>``, PyTorch >= 1.6) or, in the legacy format, a run
of pickles followed by the storages. Python's ``pickle`` executes whatever callables a file
names, so this module does not use it to read: :class:`RestrictedUnpickler` is a small pickle
interpreter of its own that knows only plain data opcodes and a fixed allow-list of
callables, which it implements itself (nothing is ever imported or called by name):

- ``torch._utils._rebuild_tensor_v2`` / ``_rebuild_tensor`` / ``_rebuild_parameter`` /
  ``_rebuild_parameter_with_state`` (their arguments are checked: the view must lie inside
  its storage, hooks must be empty),
- ``torch.<Dtype>Storage`` types, only as the type field of a storage's persistent id,
- ``collections.OrderedDict``, ``torch.Size``, ``torch.device``, ``builtins.set``/``frozenset``,
- plain containers and scalars.

Anything else is refused with :class:`UnsafeCheckpointError` before it could do anything:
a ``GLOBAL``/``STACK_GLOBAL`` outside the list, ``REDUCE``/``NEWOBJ`` of anything but an
allowed callable, ``BUILD`` on anything but an ``OrderedDict`` (whose ``_metadata``, a
state_dict's version table, is the one attribute accepted), ``INST``/``OBJ``, ``EXT1/2/4``,
out-of-band buffers, ``SETITEM(S)`` on a non-dict and ``APPEND(S)`` on a non-list (the
shapes of CVE-2026-24747), persistent ids that are not storages, storages whose byte size
does not match the declared element count (also CVE-2026-24747), and every opcode not
listed. The legacy format goes through the same interpreter (the path CVE-2025-32434 used).

Writing (:func:`save_torch`) emits the same vocabulary by hand, so ``torch.load(...,
weights_only=True)`` reads the file.
"""
from __future__ import annotations

import collections
import io
import os
import struct
import zipfile

import numpy as np

from .backends import cuda_is_available, device as _device
from .io import CheckpointError
from .tensor import Tensor

__all__ = ["load_torch", "save_torch", "RestrictedUnpickler", "UnsafeCheckpointError"]


class UnsafeCheckpointError(CheckpointError):
    """A checkpoint that asks to run code, or is malformed; raised before anything runs.

    A :class:`avila_ml.io.CheckpointError` (so a ``ValueError`` and a ``RuntimeError``).

    Example:
        >>> import avila_ml as am, io
        >>> evil = b"\\x80\\x02cos\\nsystem\\nX\\x02\\x00\\x00\\x00ls\\x85R."  # os.system("ls")
        >>> try:
        ...     am.torch_format.RestrictedUnpickler(io.BytesIO(evil)).load()
        ... except am.torch_format.UnsafeCheckpointError as e:
        ...     print(str(e)[:44])
        load_torch: the pickle names os.system, whic
    """


# storage type name -> numpy dtype; BFloat16 is widened to float32 (Avila ML has no bfloat16)
_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "BFloat16Storage": "bfloat16",
}
_BF16 = "bfloat16"

_MAX_DEPTH = 1000          # nesting of containers
_MAX_ITEMS = 50_000_000    # elements pushed in total (bounds memory of a hostile stream)


class _Global:
    """An allow-listed name met in a GLOBAL opcode: a marker, never the real object."""

    __slots__ = ("module", "name")

    def __init__(self, module: str, name: str):
        self.module, self.name = module, name

    @property
    def full(self) -> str:
        return f"{self.module}.{self.name}"

    def __repr__(self) -> str:
        return f"<global {self.full}>"


class _Storage:
    """Raw storage bytes as a 1-d NumPy array of the storage dtype, plus its device string."""

    __slots__ = ("array", "location")

    def __init__(self, array, location: str):
        self.array, self.location = array, location


_ALLOWED_GLOBALS = {
    ("collections", "OrderedDict"), ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_tensor"),
    ("torch._utils", "_rebuild_parameter"), ("torch._utils", "_rebuild_parameter_with_state"),
    ("torch", "Size"), ("torch", "device"), ("builtins", "set"), ("builtins", "frozenset"),
    ("__builtin__", "set"), ("__builtin__", "frozenset"),
} | {("torch", name) for name in _STORAGE_DTYPES}

_MARK = object()


def _err(msg: str) -> UnsafeCheckpointError:
    return UnsafeCheckpointError(f"load_torch: {msg}")


class RestrictedUnpickler:
    """A pickle interpreter that builds only plain data, tensors and storages (no code).

    ``persistent_load(pid)`` resolves storage references (given by the caller that knows
    where the bytes are); ``where_to(location)`` maps the saved device to the target one.
    ``load()`` returns the object or raises :class:`UnsafeCheckpointError` naming the
    opcode or name it refused.

    Math: none; it is a stack machine over the pickle opcodes protocols 0-5 use for data.

    Example:
        >>> import avila_ml as am, io, pickle, collections
        >>> data = pickle.dumps(collections.OrderedDict(a=[1, 2.5, "x", None, (True,)]), protocol=2)
        >>> dict(am.torch_format.RestrictedUnpickler(io.BytesIO(data)).load())
        {'a': [1, 2.5, 'x', None, (True,)]}
    """

    def __init__(self, f, persistent_load=None, where_to=None):
        self.f = f
        self.persistent_load = persistent_load
        self.where_to = where_to or (lambda loc: "cpu")
        self.made: dict = {}

    # -- reading primitives -------------------------------------------------------------
    def _read(self, n: int) -> bytes:
        if n < 0:
            raise _err(f"negative length {n} in the pickle stream")
        b = self.f.read(n)
        if len(b) != n:
            raise _err(f"pickle stream ended early (wanted {n} bytes, got {len(b)})")
        return b

    def _readline(self) -> bytes:
        line = self.f.readline(1 << 16)
        if not line.endswith(b"\n"):
            raise _err("pickle stream ended early inside a text argument")
        return line[:-1]

    def _u(self, fmt: str, n: int):
        return struct.unpack(fmt, self._read(n))[0]

    # -- the machine ----------------------------------------------------------------------
    def load(self):
        try:
            return self._run()
        except UnsafeCheckpointError:
            raise
        except (ValueError, TypeError, OverflowError, MemoryError, IndexError, KeyError, struct.error,
                RecursionError, AttributeError) as e:
            # a malformed stream that slipped past a check: still a clean refusal
            raise _err(f"malformed pickle ({type(e).__name__}: {str(e)[:200]})") from None

    def _run(self):
        stack: list = []
        marks: list = []
        memo: dict = {}
        count = 0

        def pop_mark():
            if not marks:
                raise _err("MARK expected on the stack")
            k = marks.pop()
            items = stack[k:]
            del stack[k:]
            return items

        def pop():
            if not stack or (marks and len(stack) <= marks[-1]):
                raise _err("pickle stack underflow")
            return stack.pop()

        def top():
            if not stack or (marks and len(stack) <= marks[-1]):
                raise _err("pickle stack underflow")
            return stack[-1]

        def hashable(k):
            # keys and set items: scalars, strings and shallow tuples of them. Hashing an
            # arbitrarily deep tuple recurses in C and can crash the interpreter.
            if not _simple_key(k, 0):
                raise _err(f"dict key or set item of type {type(k).__name__} is not a scalar, string or "
                           "shallow tuple of them")
            return k

        while True:
            op = self.f.read(1)
            if not op:
                raise _err("pickle stream ended without STOP")
            count += 1
            if count > _MAX_ITEMS:
                raise _err("pickle stream too long")
            c = op[0]
            if c == 0x80:      # PROTO
                proto = self._read(1)[0]
                if proto > 5:
                    raise _err(f"unsupported pickle protocol {proto}")
            elif c == 0x95:    # FRAME (length is advisory)
                self._read(8)
            elif c == 0x2E:    # STOP '.'
                if len(stack) != 1 or marks:
                    raise _err(f"STOP with {len(stack)} items on the stack")
                return stack[0]
            elif c == 0x28:    # MARK '('
                marks.append(len(stack))
            elif c == 0x30:    # POP '0'
                if marks and len(stack) == marks[-1]:
                    marks.pop()  # POP of a bare mark (allowed by pickle)
                else:
                    pop()
            elif c == 0x31:    # POP_MARK '1'
                pop_mark()
            elif c == 0x32:    # DUP '2'
                stack.append(top())
            elif c == 0x4E:    # NONE 'N'
                stack.append(None)
            elif c == 0x88:    # NEWTRUE
                stack.append(True)
            elif c == 0x89:    # NEWFALSE
                stack.append(False)
            elif c == 0x49:    # INT 'I'
                s = self._readline()
                if s == b"00":
                    stack.append(False)
                elif s == b"01":
                    stack.append(True)
                else:
                    stack.append(self._int(s))
            elif c == 0x4A:    # BININT 'J'
                stack.append(self._u("<i", 4))
            elif c == 0x4B:    # BININT1 'K'
                stack.append(self._read(1)[0])
            elif c == 0x4D:    # BININT2 'M'
                stack.append(self._u("<H", 2))
            elif c == 0x4C:    # LONG 'L'
                stack.append(self._int(self._readline().rstrip(b"L")))
            elif c == 0x8A:    # LONG1
                n = self._read(1)[0]
                stack.append(int.from_bytes(self._read(n), "little", signed=True))
            elif c == 0x8B:    # LONG4
                n = self._u("<i", 4)
                if n > 1 << 20:
                    raise _err(f"LONG4 of {n} bytes is too large")
                stack.append(int.from_bytes(self._read(n), "little", signed=True))
            elif c == 0x46:    # FLOAT 'F'
                try:
                    stack.append(float(self._readline()))
                except ValueError:
                    raise _err("malformed FLOAT") from None
            elif c == 0x47:    # BINFLOAT 'G'
                stack.append(self._u(">d", 8))
            elif c in (0x53, 0x56):  # STRING 'S', UNICODE 'V' (protocol 0 text)
                raw = self._readline()
                stack.append(self._text(raw, c))
            elif c == 0x54:    # BINSTRING 'T'
                stack.append(self._decode(self._read(self._u("<i", 4))))
            elif c == 0x55:    # SHORT_BINSTRING 'U'
                stack.append(self._decode(self._read(self._read(1)[0])))
            elif c == 0x58:    # BINUNICODE 'X'
                stack.append(self._decode(self._read(self._u("<I", 4))))
            elif c == 0x8C:    # SHORT_BINUNICODE
                stack.append(self._decode(self._read(self._read(1)[0])))
            elif c == 0x8D:    # BINUNICODE8
                stack.append(self._decode(self._read(self._u("<Q", 8))))
            elif c == 0x42:    # BINBYTES 'B'
                stack.append(self._read(self._u("<I", 4)))
            elif c == 0x43:    # SHORT_BINBYTES 'C'
                stack.append(self._read(self._read(1)[0]))
            elif c == 0x8E:    # BINBYTES8
                stack.append(self._read(self._u("<Q", 8)))
            elif c == 0x5D:    # EMPTY_LIST ']'
                stack.append([])
            elif c == 0x6C:    # LIST 'l'
                stack.append(pop_mark())
            elif c in (0x61, 0x65):  # APPEND 'a', APPENDS 'e'
                items = [pop()] if c == 0x61 else pop_mark()
                lst = top()
                if type(lst) is not list:
                    raise _err(f"APPEND(S) on a {type(lst).__name__}, not a list")
                lst.extend(items)
            elif c == 0x29:    # EMPTY_TUPLE ')'
                stack.append(())
            elif c == 0x74:    # TUPLE 't'
                stack.append(tuple(pop_mark()))
            elif c in (0x85, 0x86, 0x87):  # TUPLE1/2/3
                n = c - 0x84
                items = [pop() for _ in range(n)][::-1]
                stack.append(tuple(items))
            elif c == 0x7D:    # EMPTY_DICT '}'
                stack.append({})
            elif c == 0x64:    # DICT 'd'
                items = pop_mark()
                if len(items) % 2:
                    raise _err("DICT with an odd number of items")
                stack.append({hashable(items[i]): items[i + 1] for i in range(0, len(items), 2)})
            elif c in (0x73, 0x75):  # SETITEM 's', SETITEMS 'u'
                if c == 0x73:
                    v = pop()
                    items = [pop(), v]
                else:
                    items = pop_mark()
                    if len(items) % 2:
                        raise _err("SETITEMS with an odd number of items")
                d = top()
                if type(d) not in (dict, collections.OrderedDict):
                    raise _err(f"SETITEM(S) on a {type(d).__name__}, not a dict")
                for i in range(0, len(items), 2):
                    d[hashable(items[i])] = items[i + 1]
            elif c == 0x8F:    # EMPTY_SET
                stack.append(set())
            elif c == 0x90:    # ADDITEMS
                items = pop_mark()
                s = top()
                if type(s) is not set:
                    raise _err(f"ADDITEMS on a {type(s).__name__}, not a set")
                s.update(hashable(x) for x in items)
            elif c == 0x91:    # FROZENSET
                stack.append(frozenset(hashable(x) for x in pop_mark()))
            elif c in (0x67, 0x68, 0x6A):  # GET 'g', BINGET 'h', LONG_BINGET 'j'
                key = self._int(self._readline()) if c == 0x67 else (
                    self._read(1)[0] if c == 0x68 else self._u("<I", 4))
                if key not in memo:
                    raise _err(f"memo key {key} is not defined")
                stack.append(memo[key])
            elif c in (0x70, 0x71, 0x72):  # PUT 'p', BINPUT 'q', LONG_BINPUT 'r'
                key = self._int(self._readline()) if c == 0x70 else (
                    self._read(1)[0] if c == 0x71 else self._u("<I", 4))
                memo[key] = top()
            elif c == 0x94:    # MEMOIZE
                memo[len(memo)] = top()
            elif c == 0x63:    # GLOBAL 'c'
                module = self._decode(self._readline())
                name = self._decode(self._readline())
                stack.append(self._global(module, name))
            elif c == 0x93:    # STACK_GLOBAL
                name, module = pop(), pop()
                if type(module) is not str or type(name) is not str:
                    raise _err("STACK_GLOBAL needs two strings")
                stack.append(self._global(module, name))
            elif c == 0x52:    # REDUCE 'R'
                args = pop()
                fn = pop()
                stack.append(self._call(fn, args))
            elif c == 0x81:    # NEWOBJ
                args = pop()
                cls = pop()
                stack.append(self._call(cls, args))
            elif c == 0x92:    # NEWOBJ_EX
                kwargs, args, cls = pop(), pop(), pop()
                if kwargs:
                    raise _err("NEWOBJ_EX with keyword arguments is not allowed")
                stack.append(self._call(cls, args))
            elif c == 0x62:    # BUILD 'b'
                state = pop()
                self._build(top(), state)
            elif c in (0x50, 0x51):  # PERSID 'P', BINPERSID 'Q'
                pid = self._decode(self._readline()) if c == 0x50 else pop()
                stack.append(self._persistent(pid))
            elif c in (0x69, 0x6F):
                raise _err(f"opcode {'INST' if c == 0x69 else 'OBJ'} builds arbitrary class instances; refused")
            elif c in (0x82, 0x83, 0x84):
                raise _err("EXT opcodes (the copyreg extension registry) are refused")
            elif c in (0x96, 0x97, 0x98):
                raise _err("out-of-band buffers (BYTEARRAY8/NEXT_BUFFER/READONLY_BUFFER) are refused")
            else:
                raise _err(f"unknown or refused pickle opcode {op!r}")
            if len(marks) > _MAX_DEPTH:
                raise _err("pickle nested too deeply")

    # -- opcode helpers -------------------------------------------------------------------
    @staticmethod
    def _int(s: bytes) -> int:
        try:
            return int(s)
        except ValueError:
            raise _err(f"malformed integer {s[:20]!r}") from None

    @staticmethod
    def _decode(b: bytes) -> str:
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            raise _err("a string in the pickle is not valid UTF-8") from None

    def _text(self, raw: bytes, c: int) -> str:
        if c == 0x53:  # STRING: a quoted Python 2 str literal; only plain quoted text is accepted
            if len(raw) < 2 or raw[:1] != raw[-1:] or raw[:1] not in (b"'", b'"') or b"\\" in raw:
                raise _err("malformed or escaped STRING argument")
            return self._decode(raw[1:-1])
        if b"\\" in raw:
            raise _err("escaped UNICODE argument is refused")
        return self._decode(raw)

    def _global(self, module: str, name: str):
        if (module, name) not in _ALLOWED_GLOBALS:
            raise _err(f"the pickle names {module}.{name}, which is not on the allow-list (tensor "
                       "rebuild functions, storage types, OrderedDict, Size, device, set); refusing to load it")
        return _Global(module, name)

    def _build(self, obj, state) -> None:
        if type(obj) is collections.OrderedDict and type(state) is dict and set(state) <= {"_metadata"}:
            meta = state.get("_metadata")
            if meta is not None and not _plain(meta):
                raise _err("a state_dict's _metadata must hold plain data")
            obj.__dict__.update(state)  # plain attribute on a plain OrderedDict: no code runs
            return
        raise _err(f"BUILD (setting object state) on a {type(obj).__name__} is refused")

    def _persistent(self, pid):
        if (type(pid) is not tuple or len(pid) not in (5, 6) or pid[0] != "storage"
                or not isinstance(pid[1], _Global) or pid[1].module != "torch"
                or pid[1].name not in _STORAGE_DTYPES or type(pid[2]) is not str
                or type(pid[3]) is not str or type(pid[4]) is not int or pid[4] < 0):
            raise _err(f"persistent id {str(pid)[:80]} is not a storage reference "
                       "('storage', <Type>Storage, key, location, numel)")
        if self.persistent_load is None:
            raise _err("the pickle references a storage but no storage data is available")
        _, stype, key, location, numel = pid[:5]
        if len(pid) == 6 and pid[5] is not None:
            view = pid[5]  # legacy storage views: (view key, offset, size)
            if (type(view) is not tuple or len(view) != 3 or type(view[1]) is not int
                    or type(view[2]) is not int):
                raise _err(f"malformed storage view {view!r}")
            base = self.persistent_load(key, stype.name, numel, location)
            off, size = view[1], view[2]
            if off < 0 or size < 0 or off + size > base.array.size:
                raise _err(f"storage view [{off}, {off + size}) outside its storage of {base.array.size} elements")
            return _Storage(base.array[off: off + size], location)
        return self.persistent_load(key, stype.name, numel, location)

    def _call(self, fn, args):
        if not isinstance(fn, _Global):
            raise _err(f"REDUCE/NEWOBJ of a {type(fn).__name__} (only allow-listed callables may be called)")
        if type(args) is not tuple:
            raise _err(f"arguments of {fn.full} must be a tuple")
        name = fn.full
        if name == "collections.OrderedDict":
            if args == ():
                return collections.OrderedDict()
            if len(args) == 1 and type(args[0]) is list and all(type(p) in (tuple, list) and len(p) == 2
                                                                 for p in args[0]):
                for k, _ in args[0]:
                    if not _simple_key(k, 0):
                        raise _err(f"OrderedDict key of type {type(k).__name__} is refused")
                return collections.OrderedDict((k, v) for k, v in args[0])
            raise _err("OrderedDict takes no arguments or one list of pairs here")
        if name in ("builtins.set", "__builtin__.set", "builtins.frozenset", "__builtin__.frozenset"):
            if args == ():
                items = []
            elif len(args) == 1 and type(args[0]) in (list, tuple):
                items = args[0]
            else:
                raise _err(f"{name} takes one list")
            if not all(_simple_key(x, 0) for x in items):
                raise _err(f"{name} items must be scalars, strings or shallow tuples of them")
            return (frozenset if name.endswith("frozenset") else set)(items)
        if name == "torch.Size":
            if len(args) == 1 and type(args[0]) in (list, tuple) and all(type(s) is int and s >= 0 for s in args[0]):
                from .size import Size
                return Size(args[0])
            raise _err("torch.Size takes one sequence of non-negative ints")
        if name == "torch.device":
            if 1 <= len(args) <= 2 and type(args[0]) is str and (len(args) == 1 or type(args[1]) in (int, type(None))):
                try:
                    return _device(*args)
                except (TypeError, ValueError) as e:
                    raise _err(f"torch.device{args!r}: {e}") from None
            raise _err(f"malformed torch.device arguments {args!r}")
        if name in ("torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor"):
            return self._rebuild_tensor(args, v2=name.endswith("v2"))
        if name in ("torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state"):
            n = 3 if name.endswith("_parameter") else 4
            if len(args) != n or not isinstance(args[0], Tensor) or type(args[1]) is not bool:
                raise _err(f"{name} takes (tensor, requires_grad, hooks{', state' if n == 4 else ''})")
            _check_hooks(args[2])
            if n == 4 and not (args[3] is None or (type(args[3]) in (dict, collections.OrderedDict) and not args[3])):
                raise _err("parameters with extra state (subclass attributes) are refused")
            t = args[0]
            if args[1] and t.array.dtype.kind == "f":
                t = Tensor._wrap(t.array)
                t.requires_grad_(True)
            return t
        raise _err(f"{name} cannot be called (it is only valid as a storage type)")

    def _rebuild_tensor(self, args, v2: bool):
        if v2:
            if len(args) not in (6, 7):
                raise _err(f"_rebuild_tensor_v2 takes 6 or 7 arguments, got {len(args)}")
            storage, offset, size, stride, requires_grad, hooks = args[:6]
            _check_hooks(hooks)
            if len(args) == 7 and args[6] is not None and not (type(args[6]) is dict and _plain(args[6])):
                raise _err("tensor metadata must be a dict of plain data")
            if type(requires_grad) is not bool:
                raise _err("requires_grad must be a bool")
        else:
            if len(args) != 4:
                raise _err(f"_rebuild_tensor takes 4 arguments, got {len(args)}")
            storage, offset, size, stride = args
            requires_grad = False
        if not isinstance(storage, _Storage):
            raise _err(f"a tensor must be rebuilt from a storage, got {type(storage).__name__}")
        if (type(offset) is not int or type(size) not in (tuple, list) or type(stride) not in (tuple, list)
                or len(size) != len(stride) or not all(type(s) is int and s >= 0 for s in size)
                or not all(type(s) is int and s >= 0 for s in stride) or offset < 0 or len(size) > 64):
            raise _err(f"bad tensor geometry: offset {offset!r}, size {size!r}, stride {stride!r}")
        base = storage.array
        n = 1
        for s in size:
            n *= s
        if n > _MAX_ELEMENTS:
            raise _err(f"tensor of size {tuple(size)[:8]} has too many elements")
        if n:
            last = offset + sum((s - 1) * st for s, st in zip(size, stride))
            if last >= base.size:
                raise _err(f"tensor of size {tuple(size)}, stride {tuple(stride)} and offset {offset} reads element "
                           f"{last} of a storage with {base.size} elements")
            view = np.lib.stride_tricks.as_strided(base[offset:], shape=tuple(size),
                                                   strides=tuple(st * base.itemsize for st in stride))
            if not _non_overlapping(size, stride):
                view = view.copy()  # an expanded (stride-0) view would let one write hit many elements
        else:
            view = np.zeros(tuple(size), dtype=base.dtype)
        target = self.where_to(storage.location)
        if _device(target).type == "cuda":
            if not cuda_is_available():
                raise RuntimeError(f"load_torch: a tensor was saved on {storage.location} and would load onto "
                                   f"{target}, but no CUDA device is available; pass map_location='cpu'")
            from .factories import as_tensor
            t = as_tensor(np.ascontiguousarray(view), device=target)
        else:
            t = Tensor._wrap(view)
        if requires_grad and t.array.dtype.kind == "f":
            t.requires_grad_(True)
        return t


def _simple_key(k, depth: int) -> bool:
    if k is None or type(k) in (bool, int, float, str, bytes):
        return True
    if type(k) in (tuple, frozenset) and depth < 8:
        return all(_simple_key(x, depth + 1) for x in k)
    return False


_MAX_ELEMENTS = 1 << 34  # elements of one rebuilt tensor (a stride-0 view may exceed its storage)


def _non_overlapping(size, stride) -> bool:
    dims = sorted((st, s) for s, st in zip(size, stride) if s > 1)
    need = 1
    for st, s in dims:
        if st < need:
            return False
        need = st * s
    return True


def _check_hooks(hooks) -> None:
    if hooks is None or (type(hooks) in (dict, collections.OrderedDict) and not hooks):
        return
    raise _err("tensors with backward hooks are refused (hooks are code)")


def _plain(obj, depth: int = 0) -> bool:
    if depth > 50:
        return False
    if obj is None or type(obj) in (bool, int, float, str, bytes):
        return True
    if type(obj) in (list, tuple):
        return all(_plain(x, depth + 1) for x in obj)
    if type(obj) in (dict, collections.OrderedDict):
        return all(_plain(k, depth + 1) and _plain(v, depth + 1) for k, v in obj.items())
    return False


# ------------------------------------------------------------------------------- reading
def _storage_array(raw: bytes, stype: str, numel: int, byteorder: str, where: str):
    dt = _STORAGE_DTYPES[stype]
    if dt == _BF16:
        itemsize = 2
    else:
        itemsize = np.dtype(dt).itemsize
    if len(raw) != numel * itemsize:
        raise _err(f"storage {where} holds {len(raw)} bytes but declares {numel} elements of {itemsize} bytes")
    if dt == _BF16:  # bfloat16 is the high half of a float32
        bits = np.frombuffer(raw, dtype="<u2" if byteorder == "little" else ">u2").astype(np.uint32) << 16
        return bits.view(np.float32)
    arr = np.frombuffer(raw, dtype=np.dtype(dt).newbyteorder("<" if byteorder == "little" else ">"))
    return arr.astype(np.dtype(dt).newbyteorder("="), copy=True)


def _load_zip(f, where_to, name: str):
    try:
        z = zipfile.ZipFile(f)
    except zipfile.BadZipFile as e:
        raise _err(f"{name}: not a valid zip archive ({e})") from None
    with z:
        pkls = [n for n in z.namelist() if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkls) != 1:
            raise _err(f"{name}: a zip archive but not a PyTorch checkpoint: expected one <archive>/data.pkl "
                       f"record, found {len(pkls)}")
        prefix = pkls[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in z.namelist():
            byteorder = z.read(prefix + "byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise _err(f"{name}: unknown byteorder {byteorder!r}")
        storages: dict = {}

        def persistent_load(key, stype, numel, location):
            got = storages.get(key)
            if got is not None:
                if got[1] != stype:
                    raise _err(f"{name}: storage {key!r} is referenced as {got[1]} and as {stype}")
                return got[0]
            rec = f"{prefix}data/{key}"
            try:
                info = z.getinfo(rec)
            except KeyError:
                raise _err(f"{name}: storage record {rec!r} is missing") from None
            itemsize = 2 if _STORAGE_DTYPES[stype] == _BF16 else np.dtype(_STORAGE_DTYPES[stype]).itemsize
            if info.file_size != numel * itemsize:  # checked before reading: no zip-bomb reads
                raise _err(f"{name}: storage {key!r} holds {info.file_size} bytes but declares {numel} "
                           f"elements of {itemsize} bytes")
            st = _Storage(_storage_array(z.read(rec), stype, numel, byteorder, repr(key)), location)
            storages[key] = (st, stype)
            return st

        with z.open(pkls[0]) as pk:
            return RestrictedUnpickler(io.BytesIO(pk.read()), persistent_load, where_to).load()


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001


def _load_legacy(f, where_to, name: str):
    def plain(what):
        return RestrictedUnpickler(f).load()

    try:
        magic = plain("magic number")
    except UnsafeCheckpointError as e:
        raise _err(f"{name}: it looks like a Python pickle, not a PyTorch checkpoint: "
                   f"{str(e).removeprefix('load_torch: ')}") from None
    if magic != _LEGACY_MAGIC:
        raise _err(f"{name}: it looks like a Python pickle, not a PyTorch checkpoint (bad magic number)")
    if plain("protocol version") != _LEGACY_PROTOCOL:
        raise _err(f"{name}: unsupported legacy protocol version")
    sys_info = plain("sys info")
    if type(sys_info) is not dict:
        raise _err(f"{name}: malformed sys_info")
    little = sys_info.get("little_endian", True)
    byteorder = "little" if little else "big"
    declared: dict = {}

    def persistent_load(key, stype, numel, location):
        # the bytes come after the object pickle; read them later, hand out placeholders now
        got = declared.get(key)
        if got is None:
            itemsize = 2 if _STORAGE_DTYPES[stype] == _BF16 else np.dtype(_STORAGE_DTYPES[stype]).itemsize
            # a zero-memory stand-in of the declared length (views are bounds-checked against it)
            stand_in = np.broadcast_to(np.zeros(1, dtype=np.uint8), (numel,))
            got = declared[key] = (_Storage(stand_in, location), stype, numel, itemsize)
        elif got[1] != stype:
            raise _err(f"{name}: storage {key!r} is referenced as {got[1]} and as {stype}")
        return got[0]

    # tensors need the storage bytes, which follow the object: rebuild in two passes
    start = f.tell()
    rec = _Recorder(f, persistent_load, where_to)
    rec.load()
    keys = RestrictedUnpickler(f).load()
    if type(keys) is not list or not all(type(k) is str for k in keys) or set(keys) != set(declared):
        raise _err(f"{name}: the storage key list does not match the storages the object references")
    arrays = {}
    for key in keys:
        st, stype, numel, itemsize = declared[key]
        n = struct.unpack("<q" if little else ">q", _read_exact(f, 8, name))[0]
        if n != numel:
            raise _err(f"{name}: storage {key!r} declares {numel} elements but its data header says {n}")
        arrays[key] = _storage_array(_read_exact(f, n * itemsize, name), stype, numel, byteorder, repr(key))
    end = f.tell()
    f.seek(start)

    def persistent_load2(key, stype, numel, location):
        return _Storage(arrays[key], location)

    obj = RestrictedUnpickler(f, persistent_load2, where_to).load()
    f.seek(end)
    return obj


class _Recorder(RestrictedUnpickler):
    """First pass over the legacy object pickle: collects storage references, builds no tensor."""

    def _rebuild_tensor(self, args, v2: bool):
        return Tensor._wrap(np.zeros(0))


def _read_exact(f, n: int, name: str) -> bytes:
    if n < 0 or n > (1 << 40):
        raise _err(f"{name}: bad storage size {n}")
    b = f.read(n)
    if len(b) != n:
        raise _err(f"{name}: file ended early inside the storage data")
    return b


def load_torch(f, map_location=None):
    """Read a file written by ``torch.save`` (a state_dict or a checkpoint dict) without
    PyTorch and without running code from it (``torch.load(..., weights_only=True)``).

    Both formats are read: the zip archive (PyTorch >= 1.6) and the legacy one. Tensors come
    back as Avila ML tensors (float16/32/64, int8/16/32/64, uint8, bool; bfloat16 widened to
    float32) on the device ``map_location`` picks (as :func:`avila_ml.load`: None keeps the
    saved device). Tensors that shared a storage still share memory; ``OrderedDict``, dicts,
    lists, tuples, numbers, strings, ``torch.Size`` and ``torch.device`` come back as the
    matching Python/Avila ML objects. Anything that would run code is refused with
    :class:`UnsafeCheckpointError` (see the module docstring for the rules).

    Math: none; bytes are copied into arrays.

    Example:
        >>> import avila_ml as am, io
        >>> buf = io.BytesIO()
        >>> am.torch_format.save_torch({"w": am.ones(2, 2)}, buf)
        >>> _ = buf.seek(0)
        >>> am.torch_format.load_torch(buf)["w"]
        tensor([[1., 1.],
                [1., 1.]])
    """
    from .io import _parse_map_location
    where_to = _parse_map_location(map_location)
    if hasattr(f, "read"):
        data = f.read()
        name = repr(getattr(f, "name", "<stream>"))
    else:
        with open(os.fspath(f), "rb") as fh:
            data = fh.read()
        name = repr(os.fspath(f))
    bio = io.BytesIO(data)
    if data[:4] == b"PK\x03\x04":
        return _load_zip(bio, where_to, name)
    # anything else is read as the legacy format: a run of pickles, each through the
    # restricted unpickler (its first one must be PyTorch's magic number)
    return _load_legacy(bio, where_to, name)


# ------------------------------------------------------------------------------- writing
_STORAGE_OF = {np.dtype(np.float32): "FloatStorage", np.dtype(np.float64): "DoubleStorage",
               np.dtype(np.float16): "HalfStorage", np.dtype(np.int64): "LongStorage",
               np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage",
               np.dtype(np.int8): "CharStorage", np.dtype(np.uint8): "ByteStorage",
               np.dtype(np.bool_): "BoolStorage"}


class _Writer:
    """Emits pickle protocol 2 for plain data and tensors, as torch.save lays them out."""

    def __init__(self):
        self.out = bytearray(b"\x80\x02")
        self.storages: list = []   # arrays, in key order
        self.keys: dict = {}       # id(tensor array) -> key

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + module.encode() + b"\n" + name.encode() + b"\n"

    def str_(self, s: str) -> None:
        b = s.encode("utf-8")
        self.out += b"X" + struct.pack("<I", len(b)) + b

    def obj(self, x, depth: int = 0) -> None:
        if depth > 500:
            raise ValueError("save_torch: object nested too deeply")
        o = self.out
        if x is None:
            o += b"N"
        elif x is True:
            o += b"\x88"
        elif x is False:
            o += b"\x89"
        elif isinstance(x, (int, np.integer)):
            v = int(x)
            if 0 <= v < 256:
                o += b"K" + bytes([v])
            elif -(1 << 31) <= v < (1 << 31):
                o += b"J" + struct.pack("<i", v)
            else:
                b = v.to_bytes((v.bit_length() + 8) // 8, "little", signed=True)
                o += b"\x8a" + bytes([len(b)]) + b
        elif isinstance(x, (float, np.floating)):
            o += b"G" + struct.pack(">d", float(x))
        elif isinstance(x, str):
            self.str_(x)
        elif isinstance(x, Tensor):
            self.tensor(x)
        elif isinstance(x, _device):
            self.global_("torch", "device")
            self.str_(str(x))
            o += b"\x85R"
        elif isinstance(x, dict):
            if isinstance(x, collections.OrderedDict):
                self.global_("collections", "OrderedDict")
                o += b")R"
            else:
                o += b"}"
            if x:
                o += b"("
                for k, v in x.items():
                    self.obj(k, depth + 1)
                    self.obj(v, depth + 1)
                o += b"u"
        elif isinstance(x, list):
            o += b"]"
            if x:
                o += b"("
                for v in x:
                    self.obj(v, depth + 1)
                o += b"e"
        elif isinstance(x, tuple):
            o += b"("
            for v in x:
                self.obj(v, depth + 1)
            o += b"t"
        else:
            raise TypeError(f"save_torch: cannot write a {type(x).__name__} (plain data and tensors only)")

    def tensor(self, t: Tensor) -> None:
        arr = t.detach().cpu().array
        if arr.dtype not in _STORAGE_OF:
            raise TypeError(f"save_torch: unsupported dtype {arr.dtype}")
        key = self.keys.get(id(t))
        if key is None:
            key = str(len(self.storages))
            self.keys[id(t)] = key
            self.storages.append(np.ascontiguousarray(arr).astype(arr.dtype.newbyteorder("<"), copy=False))
        o = self.out
        self.global_("torch._utils", "_rebuild_tensor_v2")
        o += b"(("
        self.str_("storage")
        self.global_("torch", _STORAGE_OF[arr.dtype])
        self.str_(key)
        self.str_("cpu")
        self.obj(int(arr.size))
        o += b"tQ"
        self.obj(0)
        self.obj(tuple(int(s) for s in arr.shape))
        strides, acc = [], 1
        for s in reversed(arr.shape):
            strides.append(acc)
            acc *= int(s)
        self.obj(tuple(reversed(strides)))
        self.obj(bool(t.requires_grad and t.is_leaf))
        self.global_("collections", "OrderedDict")
        o += b")R"
        o += b"tR"


def _aligned_entry(zf: zipfile.ZipFile, name: str, data: bytes, align: int = 64) -> None:
    """Write a stored record whose data starts at a multiple of ``align`` (as torch.save does,
    so readers can memory-map storages), padding with an extra field."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = zf.fp.tell() + 30 + len(name.encode())
    pad = (-(offset + 4)) % align
    info.extra = struct.pack("<HH", 0x4246, pad) + b"Z" * pad
    zf.writestr(info, data)


def save_torch(obj, f) -> None:
    """Write ``obj`` (a state_dict or checkpoint dict of tensors and plain data) in PyTorch's
    zip format, readable by ``torch.load(f, weights_only=True)`` (``torch.save``).

    Tensors are written contiguous on the CPU, one storage each (a tensor object that
    appears twice is stored once); dicts keep their type (``OrderedDict`` or ``dict``);
    ``avila_ml.device`` becomes ``torch.device``. Other objects raise ``TypeError``.

    Math: none; ``load_torch(save_torch(obj))`` gives ``obj`` back with equal values.

    Example:
        >>> import avila_ml as am, io
        >>> buf = io.BytesIO()
        >>> am.torch_format.save_torch({"step": 3, "w": am.arange(3)}, buf)
        >>> _ = buf.seek(0); am.torch_format.load_torch(buf)
        {'step': 3, 'w': tensor([0, 1, 2])}
    """
    w = _Writer()
    w.obj(obj)
    w.out += b"."
    stem = "archive"
    if not hasattr(f, "write"):
        stem = os.path.splitext(os.path.basename(os.fspath(f)))[0] or "archive"
    target = f if hasattr(f, "write") else open(os.fspath(f), "wb")
    try:
        with zipfile.ZipFile(target, "w", zipfile.ZIP_STORED) as zf:
            _aligned_entry(zf, f"{stem}/data.pkl", bytes(w.out))
            _aligned_entry(zf, f"{stem}/.format_version", b"1")
            _aligned_entry(zf, f"{stem}/.storage_alignment", b"64")
            _aligned_entry(zf, f"{stem}/byteorder", b"little")
            for key, arr in enumerate(w.storages):
                _aligned_entry(zf, f"{stem}/data/{key}", arr.tobytes())
            _aligned_entry(zf, f"{stem}/version", b"3\n")
            _aligned_entry(zf, f"{stem}/.data/serialization_id", b"0" * 40)
    finally:
        if target is not f:
            target.close()
