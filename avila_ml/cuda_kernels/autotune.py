"""Per-shape choice of the tensor-core conv4d tile, timed once on the device and cached on disk.

With ``am.backends.cudnn.benchmark = True`` (PyTorch's switch for the same idea: cuDNN times its
algorithms on the first call of each shape), the first conv4d pass of a given (pass, precision,
device, shapes, stride, padding, dilation) times every compiled tile of ``conv4d_mma.cu`` and keeps
the fastest, in memory and in a JSON file, so later processes skip the timing (Triton's
autotuner caches the same way). With the flag off (the default) the fixed :data:`DEFAULT_TILE`
is used and nothing is timed.

The cache file is ``$AVILA_ML_AUTOTUNE_CACHE`` if set, else ``autotune.json`` under
``$XDG_CACHE_HOME/avila_ml`` (``~/.cache/avila_ml``). A file that cannot be read or parsed is
ignored with one warning and rewritten; a failed write (read-only home on a cluster) is
announced once and tuning goes on in memory.
"""

from __future__ import annotations

import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Callable, Sequence

from .launch_config import Conv4dGeometry
from .tensor_core import DEFAULT_TILE

CACHE_VERSION = 1
_memory: dict[str, tuple[int, int]] = {}
_warned: set[str] = set()


def cache_path() -> Path:
    """Where the tile table lives: $AVILA_ML_AUTOTUNE_CACHE, else <user cache dir>/avila_ml/autotune.json.

    >>> import os; os.environ["AVILA_ML_AUTOTUNE_CACHE"] = "/tmp/tiles.json"
    >>> str(cache_path())
    '/tmp/tiles.json'
    >>> del os.environ["AVILA_ML_AUTOTUNE_CACHE"]
    """
    override = os.environ.get("AVILA_ML_AUTOTUNE_CACHE")
    if override:
        return Path(override).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "avila_ml" / "autotune.json"


def tuning_key(op: str, precision: str, device: str, g: Conv4dGeometry) -> str:
    """The table key: everything the best tile depends on.

    >>> from avila_ml.cuda_kernels.launch_config import conv4d_geometry
    >>> g = conv4d_geometry("conv4d", (8, 16, 32, 32, 32, 32), (16, 16, 3, 3, 3, 3), 1, 1, 1)
    >>> tuning_key("forward", "f16", "NVIDIA H100", g)
    'forward|f16|NVIDIA H100|x(8, 16, 32, 32, 32, 32)|w(16, 16, 3, 3, 3, 3)|s(1, 1, 1, 1)|p(1, 1, 1, 1)|d(1, 1, 1, 1)'
    """
    return (f"{op}|{precision}|{device}|x{g.x_shape}|w{g.w_shape}|s{g.stride}|p{g.padding}|d{g.dilation}")


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _read_table(path: Path) -> dict[str, list[int]]:
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, NotADirectoryError):  # no table yet
        return {}
    except (OSError, ValueError) as exc:
        _warn_once(f"read:{path}", f"conv4d autotune: ignoring unreadable cache {path} ({exc}); it will be rewritten")
        return {}
    if not isinstance(data, dict) or data.get("version") != CACHE_VERSION or not isinstance(data.get("tiles"), dict):
        _warn_once(f"read:{path}", f"conv4d autotune: ignoring cache {path} of another format; it will be rewritten")
        return {}
    return data["tiles"]


def _write_table(path: Path, table: dict[str, list[int]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # write then rename: a concurrent reader sees the old or the new table, never half of one
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".partial") as handle:
            json.dump({"version": CACHE_VERSION, "tiles": table}, handle, indent=1, sort_keys=True)
        os.replace(handle.name, path)
    except OSError as exc:
        _warn_once(f"write:{path}", f"conv4d autotune: cannot write {path} ({exc}); keeping choices in memory only")


def choose_tile(key: str, candidates: Sequence[tuple[int, int]], time_tile: Callable[[tuple[int, int]], float],
                enabled: bool | None = None) -> tuple[int, int]:
    """The tile for ``key``: the cached choice, else the candidate ``time_tile`` measures fastest
    (then cached in memory and on disk); :data:`DEFAULT_TILE` when tuning is off. ``enabled``
    defaults to ``avila_ml.backends.cudnn.benchmark`` (torch.backends.cudnn.benchmark).

    >>> times = {(32, 32): 3.0, (64, 32): 1.0, (64, 64): 2.0}
    >>> choose_tile("doc", list(times), times.__getitem__, enabled=False)
    (64, 64)
    """
    if enabled is None:
        from ..backends import cudnn

        enabled = bool(cudnn.benchmark)
    if not enabled:
        return DEFAULT_TILE
    if key in _memory:
        return _memory[key]
    path = cache_path()
    table = _read_table(path)
    cached = table.get(key)
    if isinstance(cached, list) and tuple(cached) in {tuple(c) for c in candidates}:
        _memory[key] = tuple(cached)  # type: ignore[assignment]
        return _memory[key]
    timings = {tuple(tile): float(time_tile(tuple(tile))) for tile in candidates}
    best = min(timings, key=timings.__getitem__)
    _memory[key] = best  # type: ignore[assignment]
    table = _read_table(path)  # another process may have added entries meanwhile
    table[key] = list(best)
    _write_table(path, table)
    return best  # type: ignore[return-value]


def clear_memory_cache() -> None:
    """Forget the in-memory choices (the file stays): the next call reads the file again.

    >>> clear_memory_cache(); len(_memory)
    0
    """
    _memory.clear()
