"""Mutated copies of the tensor-core kernels, built once into one host-emulation library.

Each mutation is a (file, original text, mutated text) edit whose mutated text is guarded by a
runtime switch, ``avila_mutation == N``, so one build (about a minute) serves every mutation:
``library.avila_set_mutation(N)`` selects one, 0 is the unmutated kernel. Tests assert that the
unmutated build passes and that every mutation makes a kernel test fail: a kernel test that
cannot see a shifted lane, a dropped barrier or wait, or a broken softmax is not a test.
"""

from __future__ import annotations

import ctypes
import functools
import shutil
import tempfile
from pathlib import Path

from avila_ml.cuda_kernels.host_emulation.build import compile_host_library, open_host_library
from avila_ml.cuda_kernels.launch_config import KERNEL_SOURCE_DIR

MUTATIONS: dict[int, tuple[str, str, str]] = {
    # conv4d_mma.cu: a lane takes the fragment rows of its neighbour group (shifted thread index)
    1: ("conv4d_mma.cu",
        "    const int group = lane >> 2;\n    const int in_group = (lane & 3) * kPerRegister;",
        "    const int group = (avila_mutation == 1 ? (lane + 4) & 31 : lane) >> 2;\n"
        "    const int in_group = (lane & 3) * kPerRegister;"),
    # conv4d_mma.cu: the barrier between cp.async.wait_group and the multiply is dropped
    2: ("conv4d_mma.cu", "        __syncthreads();              // ... and every other thread's",
        "        if (avila_mutation != 2) __syncthreads();"),
    # conv4d_mma.cu: the wait for the current stage is dropped
    3: ("conv4d_mma.cu", "        avila_cp_async_wait<1>();     // everything but the prefetch has landed",
        "        if (avila_mutation != 3) avila_cp_async_wait<1>();  // (mutated)"),
    # conv4d_mma.cu: the second k-half of the B fragment reads the first half again
    4: ("conv4d_mma.cu",
        "            b_frag[ni][1] = fragment_register(b_tile, column, ks + in_group + kHalfK, kStride);",
        "            b_frag[ni][1] = fragment_register(b_tile, column, ks + in_group + (avila_mutation == 4 ? 0 : "
        "kHalfK), kStride);"),
    # attention_mma.cu: the P/dS register fragments are packed from the neighbour group's lanes
    11: ("attention_mma.cu",
         "    const int g = lane >> 2, t2 = (lane & 3) * 2;\n#pragma unroll\n    for (int kk = 0; kk < F / 2; ++kk) {",
         "    const int g = (avila_mutation == 11 ? (lane + 4) & 31 : lane) >> 2, t2 = (lane & 3) * 2;\n"
         "#pragma unroll\n    for (int kk = 0; kk < F / 2; ++kk) {"),
    # attention_mma.cu: the forward multiplies a K/V tile without the barrier after its wait
    12: ("attention_mma.cu",
         "        avila_cp_async_wait<1>();  // Q and this tile's K/V have landed; the prefetch may still fly\n"
         "        __syncthreads();",
         "        avila_cp_async_wait<1>();\n        if (avila_mutation != 12) __syncthreads();"),
    # attention_mma.cu: the online softmax forgets to rescale the running sum
    13: ("attention_mma.cu", "            row_sum[h] *= rescale;",
         "            if (avila_mutation != 13) row_sum[h] *= rescale;"),
    # attention_mma.cu: the row reduction pairs the wrong lanes (xor 4 crosses fragment rows)
    14: ("attention_mma.cu", "    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, 1));",
         "    v = fmaxf(v, __shfl_xor_sync(kFullWarp, v, avila_mutation == 14 ? 4 : 1));"),
}

_SWITCH = ('#pragma once\ninline int avila_mutation = 0;\n'
           'extern "C" void avila_set_mutation(int m) { avila_mutation = m; }\n')


def mutated_sources() -> dict[str, str]:
    """The two kernel sources with every mutation applied behind its switch."""
    sources = {name: (KERNEL_SOURCE_DIR / name).read_text() for name in ("conv4d_mma.cu", "attention_mma.cu")}
    for number, (name, original, mutated) in MUTATIONS.items():
        if sources[name].count(original) != 1:
            raise AssertionError(f"mutation {number}: anchor not found exactly once in {name}: {original!r}")
        sources[name] = sources[name].replace(original, mutated)
    return {name: '#include "mutation_switch.h"\n' + text for name, text in sources.items()}


@functools.lru_cache(maxsize=None)
def mutant_library() -> ctypes.CDLL:
    """Build (once per process) the tensor-core kernels with all mutations behind their switches."""
    root = Path(tempfile.mkdtemp(prefix="avila_mutants_"))
    for path in KERNEL_SOURCE_DIR.iterdir():
        if path.suffix in (".cu", ".cuh"):
            shutil.copy(path, root / path.name)
    shutil.copytree(KERNEL_SOURCE_DIR / "host_emulation", root / "host_emulation",
                    ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    (root / "mutation_switch.h").write_text(_SWITCH)
    for name, text in mutated_sources().items():
        (root / name).write_text(text)
    path = root / "libmutants.so"
    compile_host_library(root / "host_emulation" / "host_entry_points.cpp", path,
                         extra_flags=("-DAVILA_HOST_TENSOR_CORE_ONLY=1",))
    library = open_host_library(path)
    library.avila_set_mutation.argtypes = [ctypes.c_int]
    return library
