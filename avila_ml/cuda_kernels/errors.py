"""Errors raised by the CUDA kernel launchers; each names the kernel and the shapes involved."""


class KernelLaunchError(RuntimeError):
    """A hand-written kernel failed to compile or launch (the message names kernel and shapes)."""


class KernelOutOfMemoryError(MemoryError):
    """The GPU ran out of memory while running a hand-written kernel."""


OUT_OF_MEMORY_HINT = "use a smaller batch or the memory-lean path"
