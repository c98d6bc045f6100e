"""``cupy.cuda`` of the emulated device: one GPU with an A100's limits (sm_80)."""
from __future__ import annotations

import types

from .transfers import record_sync

# The device's limits, as cudaGetDeviceProperties reports them for an A100 (sm_80).
ATTRIBUTES = {
    "MaxThreadsPerBlock": 1024,
    "MaxBlockDimX": 1024, "MaxBlockDimY": 1024, "MaxBlockDimZ": 64,
    "MaxGridDimX": 2 ** 31 - 1, "MaxGridDimY": 65535, "MaxGridDimZ": 65535,
    "MaxSharedMemoryPerBlock": 48 * 1024,
    "MaxSharedMemoryPerBlockOptin": 163 * 1024,
    "WarpSize": 32,
    "MultiProcessorCount": 108,
    "ComputeCapabilityMajor": 8, "ComputeCapabilityMinor": 0,
}
DEVICE_COUNT = 1
_current = [0]


class CUDARuntimeError(RuntimeError):
    """``cupy.cuda.runtime.CUDARuntimeError``."""

    def __init__(self, status, message=""):
        self.status = status
        super().__init__(message or f"CUDA runtime error {status}")


class CUDADriverError(RuntimeError):
    """``cupy.cuda.driver.CUDADriverError``."""

    def __init__(self, status, message=""):
        self.status = status
        super().__init__(message or f"CUDA driver error {status}")


class OutOfMemoryError(MemoryError):
    """``cupy.cuda.memory.OutOfMemoryError``."""


class CompileException(Exception):
    """``cupy.cuda.compiler.CompileException``: NVRTC rejected a source."""

    def __init__(self, msg, source="", name="", options=()):
        self._msg, self.source, self.name, self.options = msg, source, name, options
        super().__init__(msg)


class Device:
    """``cupy.cuda.Device``: a context manager making ``id`` current."""

    def __init__(self, device=None):
        device = _current[0] if device is None else int(device)
        if not 0 <= device < DEVICE_COUNT:
            raise CUDARuntimeError(101, "cudaErrorInvalidDevice: invalid device ordinal")
        self.id = device
        self._previous: list = []

    def __enter__(self):
        self._previous.append(_current[0])
        _current[0] = self.id
        return self

    def __exit__(self, *exc):
        _current[0] = self._previous.pop()

    def __int__(self):
        return self.id

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(self.id)

    def __repr__(self):
        return f"<CUDA Device {self.id}>"

    def use(self):
        _current[0] = self.id

    def synchronize(self):
        record_sync("Device.synchronize")

    @property
    def attributes(self):
        return dict(ATTRIBUTES)

    @property
    def compute_capability(self):
        return f"{ATTRIBUTES['ComputeCapabilityMajor']}{ATTRIBUTES['ComputeCapabilityMinor']}"

    @property
    def mem_info(self):
        return (40 << 30, 40 << 30)


class Stream:
    """``cupy.cuda.Stream``: one in-order stream; ``synchronize`` waits for the device."""

    null: "Stream"

    def __init__(self, null=False, non_blocking=False, ptds=False):
        self.ptr = 0

    def synchronize(self):
        record_sync("Stream.synchronize")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def use(self):
        return self


Stream.null = Stream(null=True)


# address ranges [start, end) of the pinned host buffers cupyx.empty_pinned handed out
PINNED: list = []
MEMORY_TYPE_UNREGISTERED, MEMORY_TYPE_HOST, MEMORY_TYPE_DEVICE = 0, 1, 2


class _PointerAttributes:
    def __init__(self, kind, device):
        self.type, self.device = kind, device
        self.devicePointer = self.hostPointer = 0


def _runtime():
    def getDeviceCount():
        return DEVICE_COUNT

    def getDevice():
        return _current[0]

    def setDevice(device):
        Device(device).use()

    def deviceSynchronize():
        record_sync("runtime.deviceSynchronize")

    def getDeviceProperties(device):
        Device(device)
        return {"name": b"Avila ML emulated CUDA device (NumPy, sm_80 limits)",
                "major": ATTRIBUTES["ComputeCapabilityMajor"], "minor": ATTRIBUTES["ComputeCapabilityMinor"],
                "sharedMemPerBlock": ATTRIBUTES["MaxSharedMemoryPerBlock"],
                "sharedMemPerBlockOptin": ATTRIBUTES["MaxSharedMemoryPerBlockOptin"],
                "maxThreadsPerBlock": ATTRIBUTES["MaxThreadsPerBlock"],
                "totalGlobalMem": 40 << 30, "multiProcessorCount": ATTRIBUTES["MultiProcessorCount"]}

    def pointerGetAttributes(ptr):
        """Pinned host buffers (cupyx.empty_pinned) report memoryTypeHost, others unregistered."""
        pinned = any(start <= ptr < end for start, end in PINNED)
        return _PointerAttributes(MEMORY_TYPE_HOST if pinned else MEMORY_TYPE_UNREGISTERED, 0)

    def runtimeGetVersion():
        return 13000

    return types.SimpleNamespace(
        getDeviceCount=getDeviceCount, getDevice=getDevice, setDevice=setDevice,
        deviceSynchronize=deviceSynchronize, getDeviceProperties=getDeviceProperties,
        runtimeGetVersion=runtimeGetVersion, driverGetVersion=runtimeGetVersion,
        CUDARuntimeError=CUDARuntimeError, is_hip=False, pointerGetAttributes=pointerGetAttributes,
        memoryTypeUnregistered=MEMORY_TYPE_UNREGISTERED, memoryTypeHost=MEMORY_TYPE_HOST,
        memoryTypeDevice=MEMORY_TYPE_DEVICE,
    )


def get_current_stream(device_id=None):
    return Stream.null


def is_available():
    return True
