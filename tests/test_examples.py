"""Smoke tests: every script in examples/ runs end to end in its --quick mode."""
import glob
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLES = sorted(glob.glob(os.path.join(ROOT, "examples", "*.py")))


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_example_runs_quick(path, tmp_path):
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, path, "--quick"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{os.path.basename(path)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"


def test_volume_from_disk_streams_the_file_it_wrote(tmp_path):
    """The out-of-core example writes an HDF5 stack + labels, trains from it and reports figures."""
    h5py = pytest.importorskip("h5py")
    env = dict(os.environ, MPLBACKEND="Agg", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "volume_from_disk.py"), "--quick",
                           "--dir", str(tmp_path), "--workers", "2"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    with h5py.File(tmp_path / "wave_packets.h5", "r") as f:
        assert f["data"].shape == (256, 1, 8, 12, 12, 12) and f["data"].chunks == (1, 1, 4, 6, 6, 6)
        assert set(f["labels"][...].tolist()) <= set(range(6))
    line = next(x for x in proc.stdout.splitlines() if x.startswith("throughput"))
    assert float(line.split()[1]) > 0 and "patches/s" in line and "peak resident memory" in line
    assert "autocast('cpu', avila_ml.bfloat16)" in proc.stdout


def test_domain_parallel_example_on_2_ranks(tmp_path):
    """The domain-parallel example, split over 2 MPI ranks: it trains and reports its memory."""
    import shutil
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if not os.path.exists(mpiexec):
        mpiexec = shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not installed (pip install avila-ml[distributed])")
    env = dict(os.environ, PYTHONPATH=ROOT, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    proc = subprocess.run([mpiexec, "-n", "2", sys.executable, os.path.join(ROOT, "examples", "domain_parallel_conv4d.py"),
                           "--quick"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
                          start_new_session=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "on 2 rank(s), x split 2 ways" in proc.stdout and "fits the budget" in proc.stdout, proc.stdout
