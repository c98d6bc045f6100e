"""oneDNN (``libdnnl.so.3``) through ``ctypes``: finding and loading the library, the few C API
calls the CPU accelerator needs, and the checks at the boundary.

Why ctypes on the C API: oneDNN's C ABI is stable across 3.x releases, so any ``libdnnl.so.3``
works -- the ``onednn-cpu-gomp`` wheel (the ``cpu`` extra, CPU-only, OpenMP from the system's
``libgomp.so.1``) or a library the user points to with ``AVILA_ML_DNNL_LIBRARY``. Nothing is
compiled at install time and nothing is loaded until the first call that could use it.

The boundary is where a wrong pointer would corrupt memory silently, so every buffer handed to
oneDNN goes through :func:`check_buffer` (a C-contiguous NumPy array of the expected dtype and
byte size) and the arrays are referenced by the caller until ``dnnl_stream_wait`` returns.
Every C call's status is checked; a failure raises :class:`DnnlError` naming the call.
"""
from __future__ import annotations

import ctypes
import importlib.metadata
import os
import threading
import warnings

import numpy as np

from . import _native

__all__ = ["DnnlError", "library_path", "load", "available", "check_buffer", "aligned_empty", "version"]

ENV_VAR = "AVILA_ML_DNNL_LIBRARY"
_WHEELS = ("onednn-cpu-gomp", "onednn-cpu-iomp")  # CPU-only builds of oneDNN on PyPI

# -- C enums (oneapi/dnnl/dnnl_types.h, oneDNN 3.x; the values are part of the ABI) -----------
SUCCESS = 0
ENGINE_CPU = 1
F32 = 3
FORMAT_ANY = 1
STREAM_DEFAULT = 1
FORWARD_TRAINING = 64
FORWARD_INFERENCE = 96
BACKWARD_DATA = 160
BACKWARD_WEIGHTS = 192
CONVOLUTION_DIRECT = 1
QUERY_IMPL_INFO_STR = 8
QUERY_SRC_MD, QUERY_DIFF_SRC_MD, QUERY_WEIGHTS_MD, QUERY_DIFF_WEIGHTS_MD = 129, 130, 131, 132
QUERY_DST_MD, QUERY_DIFF_DST_MD, QUERY_WORKSPACE_MD, QUERY_SCRATCHPAD_MD = 133, 134, 135, 136
SCRATCHPAD_USER = 1
ARG_SRC, ARG_DST, ARG_WEIGHTS, ARG_BIAS = 1, 17, 33, 41
ARG_DIFF_SRC, ARG_DIFF_DST, ARG_DIFF_WEIGHTS = 129, 145, 161
ARG_SCRATCHPAD = 80
ARG_FROM, ARG_TO = ARG_SRC, ARG_DST
MAX_NDIMS = 12
_STATUS = {1: "out of memory", 2: "invalid arguments", 3: "unimplemented", 4: "iterator ends",
           5: "runtime error", 6: "not required"}

Dims = ctypes.c_int64 * MAX_NDIMS
_p = ctypes.c_void_p


class ExecArg(ctypes.Structure):
    """``dnnl_exec_arg_t``: an argument id and a memory object."""

    _fields_ = [("arg", ctypes.c_int), ("memory", _p)]


class Version(ctypes.Structure):
    """``dnnl_version_t``."""

    _fields_ = [("major", ctypes.c_int), ("minor", ctypes.c_int), ("patch", ctypes.c_int),
                ("hash", ctypes.c_char_p), ("cpu_runtime", ctypes.c_uint), ("gpu_runtime", ctypes.c_uint)]


class DnnlError(RuntimeError):
    """A oneDNN C call returned a failure status (the call and the status are in the message)."""


# argument types of the C functions used; every function returns dnnl_status_t unless noted
_SIGNATURES = {
    "dnnl_engine_create": [ctypes.POINTER(_p), ctypes.c_int, ctypes.c_size_t],
    "dnnl_stream_create": [ctypes.POINTER(_p), _p, ctypes.c_uint],
    "dnnl_stream_wait": [_p],
    "dnnl_memory_desc_create_with_strides": [ctypes.POINTER(_p), ctypes.c_int, Dims, ctypes.c_int, Dims],
    "dnnl_memory_desc_create_with_tag": [ctypes.POINTER(_p), ctypes.c_int, Dims, ctypes.c_int, ctypes.c_int],
    "dnnl_memory_desc_clone": [ctypes.POINTER(_p), _p],
    "dnnl_memory_desc_destroy": [_p],
    "dnnl_memory_desc_equal": [_p, _p],                   # returns int (1 = equal)
    "dnnl_memory_desc_get_size": [_p],                    # returns size_t
    "dnnl_memory_create": [ctypes.POINTER(_p), _p, _p, _p],
    "dnnl_memory_destroy": [_p],
    "dnnl_primitive_attr_create": [ctypes.POINTER(_p)],
    "dnnl_primitive_attr_destroy": [_p],
    "dnnl_primitive_attr_set_scratchpad_mode": [_p, ctypes.c_int],
    "dnnl_convolution_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, _p, _p, _p, _p, Dims, Dims, Dims, Dims, _p],
    "dnnl_convolution_backward_data_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, Dims, Dims, Dims, Dims, _p, _p],
    "dnnl_convolution_backward_weights_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, _p, Dims, Dims, Dims, Dims, _p, _p],
    "dnnl_reorder_primitive_desc_create": [ctypes.POINTER(_p), _p, _p, _p, _p, _p],
    "dnnl_primitive_desc_query_md": [_p, ctypes.c_int, ctypes.c_int],  # returns const md
    "dnnl_primitive_desc_query": [_p, ctypes.c_int, ctypes.c_int, _p],
    "dnnl_primitive_desc_next_impl": [_p],
    "dnnl_primitive_desc_destroy": [_p],
    "dnnl_primitive_create": [ctypes.POINTER(_p), _p],
    "dnnl_primitive_destroy": [_p],
    "dnnl_primitive_execute": [_p, _p, ctypes.c_int, ctypes.POINTER(ExecArg)],
    "dnnl_version": [],                                   # returns const dnnl_version_t *
}
_RESTYPES = {"dnnl_memory_desc_equal": ctypes.c_int, "dnnl_memory_desc_get_size": ctypes.c_size_t,
             "dnnl_primitive_desc_query_md": _p, "dnnl_version": ctypes.POINTER(Version)}

# -- issue 17, eltwise and softmax primitives (cpu_accel/_eltwise.py, _softmax.py) --------------
# alg kinds (dnnl_alg_kind_t); the values are those of oneDNN 3.0-3.x, checked in the tests by
# comparing each primitive's results with the NumPy formulas
ELTWISE_RELU, ELTWISE_TANH, ELTWISE_ELU = 0x20, 0x21, 0x22
ELTWISE_LOGISTIC, ELTWISE_EXP, ELTWISE_GELU_TANH, ELTWISE_SWISH = 0x29, 0x2A, 0x2B, 0x2C
ELTWISE_GELU_ERF = 0x31
ELTWISE_RELU_USE_DST, ELTWISE_TANH_USE_DST, ELTWISE_ELU_USE_DST = 0x100, 0x101, 0x102
ELTWISE_LOGISTIC_USE_DST, ELTWISE_EXP_USE_DST = 0x104, 0x105
SOFTMAX_ACCURATE, SOFTMAX_LOG = 0x30000, 0x30001
_SIGNATURES.update({
    # (pd, engine, prop_kind, alg, src md, dst md, alpha, beta, attr)
    "dnnl_eltwise_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, _p, _p, ctypes.c_float, ctypes.c_float, _p],
    # (pd, engine, alg, diff src md, diff dst md, data md, alpha, beta, hint fwd pd, attr)
    "dnnl_eltwise_backward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, ctypes.c_float, ctypes.c_float, _p, _p],
    # (pd, engine, prop_kind, alg, src md, dst md, axis, attr)
    "dnnl_softmax_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, _p, _p, ctypes.c_int, _p],
    # (pd, engine, alg, diff src md, diff dst md, dst md, axis, hint fwd pd, attr)
    "dnnl_softmax_backward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, ctypes.c_int, _p, _p],
})
# -- end of the issue-17 eltwise/softmax block ---------------------------------------------------

_state: dict = {}
_lock = threading.Lock()


# values of $AVILA_ML_DNNL_LIBRARY that keep oneDNN unloaded although installed (the NumPy paths
# everywhere, as on a machine without the ``cpu`` extra; benchmarks' ``--no-accel``)
_OFF = ("none", "off", "0")


def library_path() -> str | None:
    """Where ``libdnnl.so.3`` is: ``$AVILA_ML_DNNL_LIBRARY``, else the file shipped by an installed
    CPU oneDNN wheel (found through its package metadata, not a search of the disk); None if
    neither exists or the variable says ``none`` (also ``off``, ``0``)."""
    env = os.environ.get(ENV_VAR)
    if env and env.strip().lower() in _OFF:
        return None
    if env:
        return env
    for dist in _WHEELS:
        try:
            files = importlib.metadata.files(dist) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        # the soname first: the unversioned libdnnl.so is a development link
        for f in sorted(files, key=lambda f: f.name != "libdnnl.so.3"):
            if f.name.startswith("libdnnl.so"):
                path = os.path.normpath(str(f.locate()))
                if os.path.exists(path):
                    return path
    return None


class _Lib:
    """The loaded library: one CPU engine and one in-order stream for the process."""

    def __init__(self, path: str):
        self.path = path
        self.cdll = ctypes.CDLL(path)  # ctypes.CDLL releases the GIL during every call
        self.pydll = ctypes.PyDLL(path)  # the same library, calls that keep the GIL (fn_keeping_gil)
        for name, args in _SIGNATURES.items():
            fn = getattr(self.cdll, name)
            fn.argtypes = args
            fn.restype = _RESTYPES.get(name, ctypes.c_int)
        v = self.cdll.dnnl_version().contents
        self.version = (v.major, v.minor, v.patch)
        self.engine = _p()
        self.call("dnnl_engine_create", ctypes.byref(self.engine), ENGINE_CPU, 0)
        self.stream = _p()
        self.call("dnnl_stream_create", ctypes.byref(self.stream), self.engine, STREAM_DEFAULT)

    def call(self, name: str, *args) -> None:
        """Call the C function ``name``; a failure status raises :class:`DnnlError`."""
        status = getattr(self.cdll, name)(*args)
        if status != SUCCESS:
            raise DnnlError(f"oneDNN: {name} failed with status {status} "
                            f"({_STATUS.get(status, 'unknown')}); library {self.path}")

    def fn(self, name: str):
        return getattr(self.cdll, name)

    def fn_keeping_gil(self, name: str):
        """The C function ``name`` called WITHOUT releasing the GIL (its argument types copied from
        the declared one), for calls that take well under a microsecond (setting a memory's data
        handle, waiting on a stream whose work finished with ``execute``): releasing the GIL
        around each lets another Python thread take it, and getting it back may wait for a
        wake-up (estimated at ~5-10 us per hand-off on 2 vCPUs from the two-thread loss of the
        GPT-shape attention: 1.4 ms over ~180 releases per call). Used by ``_prim.execute_bound``
        and the OpenMP thread-count calls; the GIL-releasing ``fn`` stays for everything else.

        Example:
            >>> from avila_ml.cpu_accel import _dnnl
            >>> lib = _dnnl.load()
            >>> lib is None or lib.fn_keeping_gil("dnnl_stream_wait")(lib.stream) == _dnnl.SUCCESS
            True
        """
        cache = self.__dict__.setdefault("_gil_fns", {})
        if name not in cache:
            declared = getattr(self.cdll, name)
            proto = ctypes.PYFUNCTYPE(declared.restype, *(declared.argtypes or ()))
            cache[name] = proto((name, self.pydll))
        return cache[name]


def load():
    """The loaded library (:class:`_Lib`), or None when none is installed or it cannot make a
    CPU engine here. Loaded on first use, once per process; the reason it is absent is
    announced once (``warnings``) by :func:`note_absent`."""
    if "lib" in _state:
        return _state["lib"]
    with _lock:
        if "lib" in _state:
            return _state["lib"]
        lib, why = None, None
        path = library_path()
        if path is None and os.environ.get(ENV_VAR, "").strip().lower() in _OFF:
            why = (f"{ENV_VAR}={os.environ[ENV_VAR]} keeps oneDNN unloaded: float32 CPU convolutions, "
                   "GELU/SiLU/ELU, softmax, layer norm, recurrent layers and attention tiles use the "
                   "NumPy algorithms")
        elif path is None:
            why = ("oneDNN is not installed, so float32 CPU convolutions, GELU/SiLU/ELU, softmax, "
                   "layer norm and attention tiles use the NumPy algorithms (several times slower "
                   "for convolutions); `pip install 'avila-ml[cpu]'` (Linux x86-64) or set "
                   f"{ENV_VAR} to a libdnnl.so.3 to use it")
        else:
            try:
                with _passive_openmp():
                    lib = _Lib(path)
                if lib.version[0] != 3:
                    why, lib = (f"{path} is oneDNN {'.'.join(map(str, lib.version))}; the C API used "
                                "here is oneDNN 3.x's"), None
            except (OSError, AttributeError, DnnlError) as exc:
                why = f"the oneDNN library {path} could not be used ({exc})"
                lib = None
        if lib is not None:
            _sync_threads(lib)
            guard_fork(lib.cdll)
        _state["lib"], _state["why"] = lib, why
        return lib


# -- OpenMP's waiting -----------------------------------------------------------------------------
# oneDNN's OpenMP threads spin after each parallel region by default (GNU: GOMP_SPINCOUNT), and on
# a 2-core machine a spinning team takes the cores that NumPy's OpenBLAS threads need for the next
# matmul, and the reverse: the small GPT step of benchmarks/bench_programs.py took 480 ms with
# spinning oneDNN threads and 257 ms with passive ones (results/programs_amd-epyc_2026-12-06_5
# and _6.txt; PyTorch 137-140 ms, which runs BLAS and oneDNN on one OpenMP pool). The runtime reads its policy once, when it is loaded, which is
# when libdnnl is loaded here: the variable is set for that moment only (children of this process
# do not inherit it) and only where the user set no policy and no other code loaded the runtime.
#
# Passive, a thread sleeps at once, and waking it for the next primitive costs more on some
# machines than others: on a 2-core AMD EPYC virtual machine (Zen 4, AVX-512, 2026-12-07) a 288-float
# weight reorder took 45-50 us at two threads (PyTorch's spinning team: 2-4 us) and a tiny
# Conv2d forward + backward 277 us against 148 us on one thread. So GNU libgomp also gets
# GOMP_SPINCOUNT=_SPIN_COUNT (it takes precedence over the policy): a thread spins that many
# rounds before it sleeps (libgomp's documented default without a policy is 300000; the time of a round was not measured), which bridges
# the gaps between the primitives of one layer (the tiny Conv2d above: 277 -> 212 us with 30000
# rounds) and gives the cores back sooner than the default spin. bench_programs.py, same machine, two
# runs each, PyTorch ratios, passive vs short spin: small GPT 1.28 / 1.25 vs 1.08 / 1.17, DCGAN
# 1.03 / 1.14 vs 0.79 / 1.10, word LM 0.93 / 0.89 vs 0.75 / 0.78, MNIST VAE 0.96 / 0.96 vs
# 0.80 / 0.92, residual CNN 1.18 / 0.97 vs 0.97 / 1.00, char GPT 1.11 / 0.92 vs 1.02 / 1.03,
# Conv4d example 0.70 / 0.47 vs 0.55 / 0.69 (in-process program steps, 4 alternating process
# rounds, ms: word LM 104.9 vs 81.3, VAE 6.87 vs 5.11, DCGAN 115.0 vs 99.5, MNIST CNN 38.8 vs
# 35.8, small GPT 131.6 / 132.1 vs 130.2 / 126.3, Conv4d example 22.1 vs 24.1); 30000 rounds
# made the GPT steps slower again (141.5 ms), as the full default spin did above. Intel's
# libiomp5 ignores the variable and waits passively.
_WAIT_VARS = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
_SPIN_COUNT = 10000


def _openmp_loaded() -> bool:
    """True when the system OpenMP runtime (``libgomp.so``/``libiomp5.so``) is already mapped into
    this process (its wait policy is then fixed), or when that cannot be read."""
    try:
        with open("/proc/self/maps") as f:
            return any("/libgomp.so" in line or "/libiomp5.so" in line for line in f)
    except OSError:
        return True


class _passive_openmp:
    """Load oneDNN with ``OMP_WAIT_POLICY=PASSIVE`` and ``GOMP_SPINCOUNT=_SPIN_COUNT`` (a short
    spin before the sleep, GNU libgomp only) unless the user chose a policy or the runtime is
    already loaded; records in ``_state["passive"]`` whether its threads give the cores back soon
    after a parallel region (passive, or the short spin set here)."""

    def __enter__(self):
        self.set = not any(v in os.environ for v in _WAIT_VARS) and not _openmp_loaded()
        if self.set:
            os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
            os.environ["GOMP_SPINCOUNT"] = str(_SPIN_COUNT)
        return self

    def __exit__(self, *exc):
        if self.set:
            os.environ.pop("OMP_WAIT_POLICY", None)
            os.environ.pop("GOMP_SPINCOUNT", None)
        _state["passive"] = self.set or os.environ.get("OMP_WAIT_POLICY", "").upper() == "PASSIVE"
        return False


def passive_wait() -> bool:
    """True when oneDNN's OpenMP threads sleep between parallel regions, at once or after the
    short spin set by ``_passive_openmp``, instead of spinning for long; False without the
    library."""
    return load() is not None and _state.get("passive", False)


def available() -> bool:
    """True when oneDNN is loaded (or loadable) and has a CPU engine."""
    return load() is not None


def absent_reason() -> str | None:
    """Why oneDNN is not used (None when it is)."""
    load()
    return _state.get("why")


def note_absent() -> None:
    """Announce once per process, with ``warnings``, that the accelerator is absent and why."""
    if load() is None and not _state.get("noted"):
        _state["noted"] = True
        warnings.warn(f"avila_ml: {_state['why']}", stacklevel=4)


def version() -> tuple | None:
    """oneDNN's ``(major, minor, patch)``, or None when it is not available."""
    lib = load()
    return None if lib is None else lib.version


# the avx512_core bit of oneDNN's dnnl_cpu_isa_t (avx512_core 0x27, its vnni/bf16/fp16/amx
# extensions 0x67 ... 0x1fe7 carry it; avx2 0x7, avx2_vnni 0xf, avx2_vnni_2 0x1f do not)
_ISA_AVX512_CORE_BIT = 0x20


def cpu_isa() -> int | None:
    """The instruction set oneDNN's JIT kernels use here (``dnnl_get_effective_cpu_isa``, a
    ``dnnl_cpu_isa_t`` value), or None without the library."""
    lib = load()
    if lib is None:
        return None
    if "isa" not in _state:
        _state["isa"] = int(lib.fn("dnnl_get_effective_cpu_isa")())
    return _state["isa"]


def avx512() -> bool:
    """True when oneDNN's kernels are its AVX-512 ones (``avx512_core`` and up). The routing rules
    of ``_conv`` were measured per instruction set: oneDNN 3.2's AVX2 and AVX-512 kernels differ in
    which problems they handle badly.

    Example:
        >>> from avila_ml.cpu_accel import _dnnl
        >>> _dnnl.avx512() in (True, False)
        True
    """
    isa = cpu_isa()
    return bool(isa is not None and isa & _ISA_AVX512_CORE_BIT)


def guard_fork(cdll) -> None:
    """Make a child process forked after this point (a DataLoader worker, ``multiprocessing``
    with 'fork') run OpenMP regions on one thread: GNU libgomp's thread pool does not survive
    ``fork``, and a parallel region in the child waited forever for the parent's threads (a
    Conv2d in a forked child hung, AMD EPYC, 2026-12-07). ``cdll``: a library whose symbols
    resolve ``omp_set_num_threads`` (oneDNN's, or the compiled kernels'). Registered once per
    process. PyTorch's DataLoader workers likewise run ``torch.set_num_threads(1)``.

    Example:
        >>> import ctypes
        >>> from avila_ml.cpu_accel import _dnnl
        >>> _dnnl.guard_fork(ctypes.CDLL(None))  # no OpenMP symbol there: nothing registered
    """
    if _state.get("fork_guard"):
        return
    setter = getattr(cdll, "omp_set_num_threads", None)
    if setter is None:
        return
    setter.argtypes, setter.restype = [ctypes.c_int], None

    def one_thread():
        _state["forked"] = True
        setter(1)
    os.register_at_fork(after_in_child=one_thread)
    _state["fork_guard"] = True


def forked() -> bool:
    """True in a child forked after :func:`guard_fork` (its OpenMP regions run on one thread)."""
    return _state.get("forked", False)


def _sync_threads(lib) -> None:
    """Give oneDNN's OpenMP runtime as many threads as BLAS has (``threadpoolctl``), so a
    program that limits its BLAS threads (``OPENBLAS_NUM_THREADS``, ``threadpool_limits``) is
    not oversubscribed by convolutions. A later ``threadpoolctl.threadpool_limits(n)`` limits
    both, as it limits every OpenMP runtime it finds."""
    from ..ops._cpu_threads import blas_threads
    try:  # a fresh controller: the one made before the library was loaded does not list its runtime
        from threadpoolctl import ThreadpoolController
        ctl = ThreadpoolController()
    except Exception:  # noqa: BLE001 - no thread control: OpenMP keeps its own default
        return
    # oneDNN's runtime only: the system's libgomp (the gomp wheel) or Intel's libiomp5 (the
    # iomp wheel); PyTorch bundles its own renamed libgomp-<hash>.so.1, which is left alone
    n = blas_threads()
    for m in ctl.lib_controllers:
        if m.user_api == "openmp" and os.path.basename(m.filepath).startswith(("libgomp.so", "libiomp5.so")):
            if m.num_threads != n:
                m.set_num_threads(n)


# -- OpenBLAS's spinning workers -----------------------------------------------------------------
# After each multi-threaded call NumPy's OpenBLAS keeps its worker threads spinning for about
# 0.1 s (its THREAD_TIMEOUT, 2^28 cycles), so a oneDNN convolution that follows a matmul shares
# the cores with a thread that does nothing. In the MNIST CNN step of benchmarks/bench_programs.py
# (per-thread CPU time from /proc/self/task, AMD EPYC 2 cores, machine loaded by other users,
# 2026-12-06) the OpenBLAS worker used 26.5 ms of CPU during the 26.6 ms of the convolution
# forwards and as much during their backwards: the two oneDNN threads ran on what was left
# (the step's convolutions took 66 ms against 32 ms for the same five calls run back to back in
# the same process). Lowering the timeout for the whole process (OPENBLAS_THREAD_TIMEOUT=4)
# stops that, but then every matmul wakes sleeping threads (a 256^2 matmul 0.24 -> 8 ms on the
# loaded machine). So instead the workers are stopped right before a oneDNN convolution, only
# when they exist: OpenBLAS's own shutdown (``blas_thread_shutdown_``, what it runs before a
# fork), after which its next multi-threaded call starts them again, lazily, as after a fork
# (~0.1 ms, once per switch from matmuls to convolutions). Stopping them while another thread
# is inside a BLAS call could lose that call's work, so it is done only while every other
# Python thread is one of this library's own pools, which never call BLAS with more than one
# thread while a convolution runs.
_OWN_THREADS = ("avila-", "avila_ml")
_blas: dict = {}


def _openblas_handles() -> list:
    """``[(blas_server_avail, blas_thread_shutdown_)]`` of every OpenBLAS found by threadpoolctl
    (probed once; an OpenBLAS loaded later, e.g. by SciPy, is not seen)."""
    if "handles" not in _blas:
        handles = []
        try:
            from threadpoolctl import ThreadpoolController
            for m in ThreadpoolController().lib_controllers:
                # the pthreads build only: an OpenMP-threaded OpenBLAS has no spinning pool of its own
                if m.internal_api != "openblas" or getattr(m, "threading_layer", None) != "pthreads":
                    continue
                cdll = ctypes.CDLL(m.filepath)
                shutdown = cdll.blas_thread_shutdown_
                shutdown.argtypes, shutdown.restype = [], ctypes.c_int
                handles.append((ctypes.c_int.in_dll(cdll, "blas_server_avail"), shutdown))
        except Exception:  # noqa: BLE001 - no threadpoolctl, or an OpenBLAS without these symbols
            handles = []
        _blas["handles"] = handles
    return _blas["handles"]


# stop NumPy's OpenBLAS threads from spinning through each oneDNN call (``quiet_blas``)
QUIET_BLAS = True


def quiet_blas() -> None:
    """:func:`stop_blas_spinning` unless switched off (``QUIET_BLAS = False``); run before every
    oneDNN execution (``_prim.Executor._run_all``, the matmul plans)."""
    if QUIET_BLAS:
        stop_blas_spinning()


def blas_workers_up() -> bool:
    """Whether NumPy's OpenBLAS has its worker threads up (a threaded product ran since they were
    last stopped): stopping them now means restarting them at its next threaded product.

    Example:
        >>> from avila_ml.cpu_accel._dnnl import blas_workers_up
        >>> blas_workers_up() in (True, False)
        True
    """
    return any(avail.value for avail, _ in _openblas_handles())


def stop_blas_spinning() -> bool:
    """Stop NumPy's OpenBLAS worker threads (see the comment above) when they are running and no
    foreign Python thread could be inside a BLAS call; True when some were stopped. Called
    before every oneDNN execution (:func:`quiet_blas`; ``QUIET_BLAS = False`` turns it off). PyTorch has no
    counterpart: its matmuls and convolutions share one OpenMP pool.

    Example:
        >>> from avila_ml.cpu_accel._dnnl import stop_blas_spinning
        >>> stop_blas_spinning() in (True, False)  # False: none running, no OpenBLAS, or a foreign thread
        True
    """
    live = [(avail, shutdown) for avail, shutdown in _openblas_handles() if avail.value]
    if not live:
        return False
    me = threading.current_thread()
    if any(t is not me and not t.name.startswith(_OWN_THREADS) for t in threading.enumerate()):
        return False
    for _, shutdown in live:
        shutdown()
    return True


# -- buffers at the boundary ---------------------------------------------------------------------
_ALIGN = 64  # oneDNN's kernels load whole cache lines; NumPy only guarantees 16 bytes


def aligned_empty(nbytes: int, dtype=np.float32) -> np.ndarray:
    """A 1-d uninitialised array of ``nbytes`` bytes whose data starts on a 64-byte boundary
    (allocated through NumPy, so ``tracemalloc`` and the memory benchmarks see it)."""
    raw = np.empty(nbytes + _ALIGN, dtype=np.uint8)
    off = (-raw.ctypes.data) % _ALIGN
    return raw[off:off + nbytes].view(dtype)


def check_buffer(a, dtype, nbytes: int, what: str) -> int:
    """The data pointer of ``a`` after checking that oneDNN may read/write ``nbytes`` there:
    a C-contiguous NumPy array of ``dtype`` holding exactly ``nbytes`` bytes."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"oneDNN boundary: {what} must be a NumPy array, got {type(a).__name__}")
    if a.dtype != dtype:
        raise TypeError(f"oneDNN boundary: {what} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"oneDNN boundary: {what} of shape {a.shape} must be C-contiguous "
                         f"(strides {a.strides})")
    if a.nbytes != nbytes:
        raise ValueError(f"oneDNN boundary: {what} has {a.nbytes} bytes, the primitive expects {nbytes}")
    if not a.flags.writeable and what.startswith("output"):
        raise ValueError(f"oneDNN boundary: {what} is read-only")
    return _native.addr(a)


# -- issue 17, normalization (cpu_accel/_norm.py) -----------------------------------------------
# constants of oneapi/dnnl/dnnl_types.h (oneDNN 3.x ABI) and the C calls _norm.py uses; each bound
# function exists in libdnnl 3.2 (``nm -D``). (oneDNN's pooling and batch normalization were measured
# and not kept: on plain C-order arrays both were slower than the NumPy paths, see ops/pooling.py
# and ops/normalization.py.)
BACKWARD = 128
NORM_USE_SCALE, NORM_USE_SHIFT = 0x2, 0x4
ARG_MEAN, ARG_VARIANCE, ARG_SCALE, ARG_SHIFT = 49, 50, 51, 52
ARG_DIFF_SCALE, ARG_DIFF_SHIFT = 255, 256
_SIGNATURES.update({
    "dnnl_layer_normalization_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, ctypes.c_float, ctypes.c_uint, _p],
    "dnnl_layer_normalization_backward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, _p, _p, _p, _p, ctypes.c_float, ctypes.c_uint, _p, _p],
})

# -- issue 17, recurrent layers (cpu_accel/_rnn.py) ----------------------------------------------
# dnnl_rnn_direction_t, the RNN argument ids and the workspace (oneapi/dnnl/dnnl_types.h, oneDNN 3.x
# ABI); each function bound here exists in libdnnl 3.2 (``nm -D``)
RNN_LEFT2RIGHT, RNN_RIGHT2LEFT = 1, 2
ARG_SRC_LAYER, ARG_SRC_ITER, ARG_SRC_ITER_C = 1, 2, 3
ARG_DST_LAYER, ARG_DST_ITER, ARG_DST_ITER_C = 17, 18, 19
ARG_WEIGHTS_LAYER, ARG_WEIGHTS_ITER = 33, 34
ARG_WORKSPACE = 64
ARG_DIFF_SRC_LAYER, ARG_DIFF_SRC_ITER, ARG_DIFF_SRC_ITER_C = 129, 130, 131
ARG_DIFF_DST_LAYER, ARG_DIFF_DST_ITER, ARG_DIFF_DST_ITER_C = 145, 146, 147
ARG_DIFF_WEIGHTS_LAYER, ARG_DIFF_WEIGHTS_ITER, ARG_DIFF_BIAS = 161, 162, 169
QUERY_EXEC_ARG_MD = 255  # dnnl_primitive_desc_query_md(pd, this, arg id): the md of one argument
_SIGNATURES.update({
    # (pd, engine, prop_kind, direction, src_layer, src_iter, src_iter_c, weights_layer,
    #  weights_iter, weights_peephole, weights_projection, bias, dst_layer, dst_iter, dst_iter_c,
    #  flags, attr)
    "dnnl_lstm_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int] + [_p] * 11 + [ctypes.c_uint, _p],
    # (pd, engine, prop_kind, direction, the 11 mds of the forward, then diff_src_layer,
    #  diff_src_iter, diff_src_iter_c, diff_weights_layer, diff_weights_iter, diff_weights_peephole,
    #  diff_weights_projection, diff_bias, diff_dst_layer, diff_dst_iter, diff_dst_iter_c, flags,
    #  hint fwd pd, attr)
    "dnnl_lstm_backward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int] + [_p] * 22 + [ctypes.c_uint, _p, _p],
})
_SIGNATURES.update({
    # (pd, engine, prop_kind, direction, src_layer, src_iter, weights_layer, weights_iter, bias,
    #  dst_layer, dst_iter, flags, attr)
    "dnnl_lbr_gru_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int] + [_p] * 7 + [ctypes.c_uint, _p],
    # (pd, engine, prop_kind, direction, the 7 mds of the forward, their 7 diffs, flags, hint, attr)
    "dnnl_lbr_gru_backward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int] + [_p] * 14 + [ctypes.c_uint, _p, _p],
    # (pd, engine, prop_kind, activation alg, direction, the 7 mds, flags, alpha, beta, attr)
    "dnnl_vanilla_rnn_forward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [_p] * 7
        + [ctypes.c_uint, ctypes.c_float, ctypes.c_float, _p],
    # (pd, engine, prop_kind, activation alg, direction, 7 mds, 7 diffs, flags, alpha, beta, hint, attr)
    "dnnl_vanilla_rnn_backward_primitive_desc_create": [
        ctypes.POINTER(_p), _p, ctypes.c_int, ctypes.c_int, ctypes.c_int] + [_p] * 14
        + [ctypes.c_uint, ctypes.c_float, ctypes.c_float, _p, _p],
})
# -- end of the issue-17 recurrent block ----------------------------------------------------------
