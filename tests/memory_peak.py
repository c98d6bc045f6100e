"""Peak NumPy/Python allocation of a call, for the memory-bound tests (tracemalloc counts
NumPy's buffers, which is what our CPU paths allocate)."""
import tracemalloc


def peak_bytes(fn) -> int:
    """The highest number of bytes traced while ``fn()`` ran (allocations that predate the call
    and are still held count too: subtract them where a test means the extra memory)."""
    tracemalloc.start()
    tracemalloc.reset_peak()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
