"""The conv4d tile autotuner: selection, the in-memory and on-disk cache, the switch, the cache
path. Timings come from a stand-in timer (no GPU here); that every tile it may choose computes
the right result is tested on the emulator (test_tensor_core_conv4d.py, every tile)."""

from __future__ import annotations

import json

import pytest

import avila_ml as am
from avila_ml.cuda_kernels import autotune
from avila_ml.cuda_kernels.launch_config import CONV4D_MMA_TILES, conv4d_geometry
from avila_ml.cuda_kernels.tensor_core import DEFAULT_TILE, fitting_tiles


class Timer:
    """Stand-in device timer: fixed milliseconds per tile, counting the calls."""

    def __init__(self, times):
        self.times = dict(times)
        self.calls = []

    def __call__(self, tile):
        self.calls.append(tile)
        return self.times[tile]


@pytest.fixture
def cache(tmp_path, monkeypatch):
    path = tmp_path / "tiles.json"
    monkeypatch.setenv("AVILA_ML_AUTOTUNE_CACHE", str(path))
    autotune.clear_memory_cache()
    yield path
    autotune.clear_memory_cache()


KEY = autotune.tuning_key("forward", "f16", "test GPU",
                          conv4d_geometry("t", (2, 4, 8, 8, 8, 8), (8, 4, 3, 3, 3, 3), 1, 1, 1))
TIMES = {(32, 32): 4.0, (64, 32): 1.5, (64, 64): 2.0, (128, 64): 3.0}


def test_tuning_picks_the_fastest_tile_and_caches_it_in_memory_and_on_disk(cache):
    timer = Timer(TIMES)
    assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, timer, enabled=True) == (64, 32)
    assert sorted(timer.calls) == sorted(CONV4D_MMA_TILES)  # each candidate timed once
    assert json.loads(cache.read_text()) == {"version": 1, "tiles": {KEY: [64, 32]}}
    assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, timer, enabled=True) == (64, 32)
    assert len(timer.calls) == len(CONV4D_MMA_TILES), "the second call must not time again"
    # a new process (empty memory) reads the file instead of timing
    autotune.clear_memory_cache()
    fresh = Timer(TIMES)
    assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, fresh, enabled=True) == (64, 32) and fresh.calls == []


def test_each_shape_gets_its_own_entry_and_entries_accumulate(cache):
    other = KEY.replace("x(2, 4,", "x(3, 4,")
    autotune.choose_tile(KEY, CONV4D_MMA_TILES, Timer(TIMES), enabled=True)
    autotune.choose_tile(other, CONV4D_MMA_TILES, Timer({**TIMES, (128, 64): 0.5}), enabled=True)
    assert json.loads(cache.read_text())["tiles"] == {KEY: [64, 32], other: [128, 64]}


def test_tuning_off_uses_the_fixed_default_without_timing(cache):
    timer = Timer(TIMES)
    before = am.backends.cudnn.benchmark
    try:
        am.backends.cudnn.benchmark = False
        assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, timer) == DEFAULT_TILE == (64, 64)
        am.backends.cudnn.benchmark = True  # the flag is read at call time, like torch's
        assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, timer) == (64, 32)
    finally:
        am.backends.cudnn.benchmark = before
    assert not cache.exists() or KEY in cache.read_text()


def test_a_corrupt_or_foreign_cache_is_ignored_with_a_warning_and_rewritten(cache):
    cache.write_text("{not json")
    autotune._warned.clear()
    with pytest.warns(RuntimeWarning, match="ignoring unreadable cache"):
        assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, Timer(TIMES), enabled=True) == (64, 32)
    assert json.loads(cache.read_text())["tiles"] == {KEY: [64, 32]}
    # a cached tile that is no longer a candidate (e.g. does not fit this device) is re-timed
    autotune.clear_memory_cache()
    timer = Timer(TIMES)
    assert autotune.choose_tile(KEY, [(32, 32), (64, 64)], timer, enabled=True) == (64, 64)
    assert sorted(timer.calls) == [(32, 32), (64, 64)]


def test_an_unwritable_cache_warns_once_and_tunes_in_memory(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("AVILA_ML_AUTOTUNE_CACHE", str(blocker / "sub" / "tiles.json"))  # parent is a file
    autotune.clear_memory_cache()
    autotune._warned.clear()
    try:
        with pytest.warns(RuntimeWarning, match="keeping choices in memory only"):
            assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, Timer(TIMES), enabled=True) == (64, 32)
        timer = Timer(TIMES)
        assert autotune.choose_tile(KEY, CONV4D_MMA_TILES, timer, enabled=True) == (64, 32) and timer.calls == []
    finally:
        autotune.clear_memory_cache()


def test_cache_path_defaults_to_the_user_cache_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("AVILA_ML_AUTOTUNE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert autotune.cache_path() == tmp_path / "avila_ml" / "autotune.json"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert autotune.cache_path() == tmp_path / ".cache" / "avila_ml" / "autotune.json"


def test_candidates_respect_the_shared_memory_limit():
    assert fitting_tiles("tf32", 48 * 1024) == ((32, 32), (64, 32), (64, 64))
    assert fitting_tiles("f16", 48 * 1024) == CONV4D_MMA_TILES
