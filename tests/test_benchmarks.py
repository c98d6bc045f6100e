"""The benchmark harness: result files never overwrite, tables carry the machine facts, and a
benchmark runs end to end with each library in its own process."""
import datetime
import glob
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import harness  # noqa: E402


def test_cpu_slug_is_a_file_name():
    assert harness.cpu_slug("Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz", "") == "intel-xeon-platinum-8481c-2-70ghz"
    assert harness.cpu_slug("AMD EPYC 7B13 64-Core Processor", "AVX2") == "amd-epyc-7b13-64-core-processor"
    assert harness.cpu_slug("AMD EPYC", "AVX-512") == "amd-epyc-avx512"


def test_cpu_isa_names_the_widest_vector_set():
    assert harness.cpu_isa("fpu sse2 avx avx2 fma avx512f avx512bw") == "AVX-512"
    assert harness.cpu_isa("fpu sse2 avx avx2 fma") == "AVX2"
    assert harness.cpu_isa("fpu sse2") == ""
    assert harness.cpu_isa() in harness.cpu_description()


def test_results_path_never_reuses_a_name(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "HERE", str(tmp_path))
    os.makedirs(tmp_path / "results")
    day = datetime.date(2026, 1, 2)
    first = harness.results_path("mlp", when=day)
    assert os.path.basename(first) == f"mlp_{harness.cpu_slug()}_2026-01-02.txt"
    open(first, "w").close()
    second = harness.results_path("mlp", when=day)
    assert second != first and second.endswith("_2026-01-02_2.txt")
    assert os.path.basename(harness.results_path("mlp", threads=1, when=day)).startswith("mlp_1thread_")


def test_table_reports_median_spread_ratio_and_target():
    cases = [(0, harness.Case("step", lambda L: None, target=1.5))]
    results = {0: {"avila_ml": [{"s": 0.003}, {"s": 0.002}, {"s": 0.004}],
                   "torch": [{"s": 0.002, "threads": 2}, {"s": 0.001, "threads": 2}, {"s": 0.003, "threads": 2}]}}
    text = harness.format_table("t", ["header line"], cases, results)
    assert "3.00 ms [2.00 ms-4.00 ms]" in text and "2.00 ms [1.00 ms-3.00 ms]" in text
    assert "1.50x" in text and "target <= 1.5x met" in text and "header line" in text
    loaded = harness.format_table("t", [], cases, results, loaded=True)
    assert "not judged (loaded machine)" in loaded


@pytest.mark.skipif(not os.path.exists("/proc/stat"), reason="needs Linux /proc/stat")
def test_foreign_load_counts_other_programs_not_the_benchmarks_own_children():
    """A process the benchmark did not wait for counts as foreign; one it ran and waited for
    (a worker) is its own. The load average could not tell the two apart."""
    spin = [sys.executable, "-c", "import time\nt = time.monotonic()\nwhile time.monotonic() - t < 0.8: pass"]
    meter = harness.ForeignLoad()
    other = subprocess.Popen(spin)
    time.sleep(0.8)
    foreign = meter.cores()
    other.wait()
    assert foreign is not None and foreign >= 0.3, foreign  # about one core, minus start-up
    meter = harness.ForeignLoad()
    subprocess.run(spin, check=True)  # a child the benchmark waited for: its own time
    own_run = meter.cores()
    assert own_run is not None and own_run < foreign, (own_run, foreign)
    header = harness.machine_header({"gemm_gflops": 1.0, "copy_gbs": 1.0}, (0.1, 0.1), None, foreign=0.5)
    assert any("other programs used 0.50 cores" in line for line in header)
    assert any(line.startswith("LOADED MACHINE: other programs used 0.50 cores") for line in header)
    quiet = harness.machine_header({"gemm_gflops": 1.0, "copy_gbs": 1.0}, (2.0, 2.0), None, foreign=0.05)
    assert not any(line.startswith("LOADED") for line in quiet)  # own load alone is not "loaded"


def test_child_environment_drops_the_wait_policy(monkeypatch):
    monkeypatch.setenv("OMP_WAIT_POLICY", "PASSIVE")
    monkeypatch.setenv("GOMP_SPINCOUNT", "0")
    monkeypatch.setenv("KMP_BLOCKTIME", "0")
    env = harness.child_env(None)
    assert not {"OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"} & set(env)
    assert env["PYTHONPATH"].split(os.pathsep)[0] == harness.ROOT
    assert harness.child_env(2)["OPENBLAS_NUM_THREADS"] == "2"


def test_no_accel_unloads_onednn_in_our_worker_only(monkeypatch):
    """``--no-accel`` / ``--ours-env``: only Avila ML's worker gets AVILA_ML_DNNL_LIBRARY=none or
    the given variables (PyTorch's process is as always), and =none really keeps oneDNN unloaded."""
    seen = {}
    real_run = subprocess.run

    def run(cmd, env, **kw):
        seen[cmd[cmd.index("--worker") + 1]] = env.get("AVILA_ML_DNNL_LIBRARY")
        return subprocess.CompletedProcess(cmd, 0, stdout=harness._TAG + "{}", stderr="")
    monkeypatch.setattr(harness.subprocess, "run", run)
    monkeypatch.delenv("AVILA_ML_DNNL_LIBRARY", raising=False)
    args = type("A", (), {"threads": None, "inner": 1, "no_accel": True, "ours_env": []})()
    for lib in harness.LIBS:
        harness._run_round("x.py", lib, [0], args)
    assert seen == {"avila_ml": "none", "torch": None}
    args.no_accel, args.ours_env = False, ["AVILA_ML_DNNL_LIBRARY=/x/libdnnl.so.3"]  # --ours-env: ours only too
    for lib in harness.LIBS:
        harness._run_round("x.py", lib, [0], args)
    assert seen == {"avila_ml": "/x/libdnnl.so.3", "torch": None}
    code = ("from avila_ml.cpu_accel import _dnnl; print(_dnnl.library_path(), _dnnl.load(), "
            "'AVILA_ML_DNNL_LIBRARY=none' in _dnnl._state['why'])")
    out = real_run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT, "AVILA_ML_DNNL_LIBRARY": "none"})
    assert out.returncode == 0 and out.stdout.split() == ["None", "None", "True"], out.stderr[-2000:]


def test_against_runs_another_checkout_as_the_reference(monkeypatch, tmp_path):
    """``--against PATH``: the reference worker is Avila ML imported from PATH (first on its
    PYTHONPATH), this checkout's worker is as always, ``--no-accel`` reaches both; the table
    names the reference and judges no PyTorch target."""
    seen = {}

    def run(cmd, env, **kw):
        seen.setdefault(env["PYTHONPATH"].split(os.pathsep)[0], []).append(
            (cmd[cmd.index("--worker") + 1], env.get("AVILA_ML_DNNL_LIBRARY")))
        return subprocess.CompletedProcess(cmd, 0, stdout=harness._TAG + "{}", stderr="")
    monkeypatch.setattr(harness.subprocess, "run", run)
    monkeypatch.delenv("AVILA_ML_DNNL_LIBRARY", raising=False)
    args = type("A", (), {"threads": None, "inner": 1, "no_accel": True, "ours_env": [],
                          "against": str(tmp_path)})()
    for lib in harness.LIBS:
        harness._run_round("x.py", lib, [0], args)
    assert seen == {harness.ROOT: [("avila_ml", "none")], str(tmp_path): [("avila_ml", "none")]}
    cases = [(0, harness.Case("c", lambda L: None, target=1.0))]
    results = {0: {"avila_ml": [{"s": 2.0}], "torch": [{"s": 1.0}]}}
    text = harness.format_table("t", [], cases, results, reference="avila_ml abc1234")
    assert "avila_ml abc1234 median" in text and " 2.00x" in text
    assert "target" not in text and "PyTorch intra-op" not in text
    with pytest.raises(SystemExit, match="no avila_ml package"):
        harness.main("t", cases, argv=["--against", str(tmp_path), "--no-save"])
    from avila_ml.cpu_accel import _dnnl  # a whole run with oneDNN switched off counts as --no-accel
    assert harness._DNNL_OFF == _dnnl._OFF


def test_a_benchmark_runs_end_to_end_in_separate_processes():
    """One cheap case of the real-program benchmark, one round: both workers start, time, report."""
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "bench_programs.py"), "--rounds", "1",
                           "--only", "digits_mlp", "--no-save"], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "each library in its own process" in out and "versions: Python" in out and "GFLOP/s" in out
    row = [line for line in out.splitlines() if line.startswith("examples/digits_mlp.py")]
    assert len(row) == 1 and re.search(r"\s\d+\.\d\dx\s", row[0]), out


def test_every_benchmark_child_process_gets_the_defaults_environment():
    # a child started with os.environ as it is would inherit an OMP_WAIT_POLICY (which slows
    # PyTorch itself): every benchmark builds its children's environment with harness.child_env
    for path in glob.glob(os.path.join(harness.HERE, "*.py")):
        if os.path.basename(path) == "harness.py":
            continue
        with open(path) as f:
            src = f.read()
        assert "dict(os.environ" not in src and "OMP_WAIT_POLICY" not in src, path


def test_no_benchmark_names_its_own_result_file():
    """Result files come from harness.results_path (a new CPU-and-date name each run), so a rerun
    never overwrites a tracked file (bench_distributed once wrote a fixed name)."""
    for path in glob.glob(os.path.join(ROOT, "benchmarks", "bench_*.py")):
        with open(path) as f:
            text = f.read()
        assert not re.search(r"""join\([^)]*["']results["']""", text), os.path.basename(path)


def test_onednn_trace_reads_both_verbose_formats_and_matches_rows():
    """``onednn_trace.parse``: oneDNN 3.2's and 3.12's verbose lines of the same execution give
    one key (so the side-by-side table matches them); times are per key in call order, and the
    table's per-step sums weigh each execution by its calls per step."""
    import onednn_trace
    old = ("onednn_verbose,exec,cpu,convolution,jit:avx512_core,forward_training,src_f32::blocked:aBcd16b::f0 "
           "wei_f32::blocked:ABcd16b16a::f0 bia_undef::undef::: dst_f32::blocked:aBcd16b::f0,attr-scratchpad:user ,"
           "alg:convolution_direct,mb2_ic16oc16_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1,{t}")
    new = ("onednn_verbose,v1,primitive,exec,cpu,convolution,brg:avx512_core,forward_training,"
           "src:f32:a:blocked:aBcd16b::f0 wei:f32:a:blocked:ABcd16b16a::f0 bia:undef::undef::: "
           "dst:f32:a:blocked:aBcd16b::f0,attr-scratchpad:user,alg:convolution_direct,"
           "mb2_ic16oc16_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1,{t}")
    reorder = ("onednn_verbose,exec,cpu,reorder,jit:blk,undef,src_f32::blocked:abcd::f0 "
               "dst_f32::blocked:aBcd16b::f0,attr-scratchpad:user ,,2x16x8x8,{t}")
    a = onednn_trace.parse([old.format(t=1.0), reorder.format(t=0.1), old.format(t=3.0), reorder.format(t=0.3)])
    b = onednn_trace.parse([new.format(t=2.0), new.format(t=2.0)])
    key = ("convolution", "forward_training", "src:aBcd16b wei:ABcd16b16a bia:- dst:aBcd16b",
           "mb2_ic16oc16_ih8oh8kh3sh1dh0ph1_iw8ow8kw3sw1dw0pw1")
    assert list(a)[0] == key and list(b) == [key]
    assert a[key] == ("jit:avx512_core", [1.0, 3.0]) and b[key] == ("brg:avx512_core", [2.0, 2.0])
    runs = {"avila_ml": {"info": {"steps": 2, "onednn": "v3.2.0"},
                         "execs": [old.format(t=1.0), reorder.format(t=0.1), old.format(t=3.0), reorder.format(t=0.3)],
                         "wall": 4e-3},
            "torch": {"info": {"steps": 2, "onednn": "v3.12.0"}, "execs": [new.format(t=2.0), new.format(t=2.0)],
                      "wall": 2.5e-3}}
    text = onednn_trace.table("t", runs)
    assert "oneDNN: avila_ml v3.2.0, torch v3.12.0" in text
    # per step: ours 1 conv (median of the last half: 3.0) + 1 reorder (0.3); PyTorch 1 conv (2.0)
    assert re.search(r"sum of the executions per step\s+3\.300 ms\s+2\.000 ms", text), text
    assert re.search(r"without verbose output\s+4\.000 ms\s+2\.500 ms", text), text
