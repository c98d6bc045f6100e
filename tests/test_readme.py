"""README.md stays true: its quickstart runs, and its set-up commands are the Makefile's."""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _readme():
    with open(os.path.join(ROOT, "README.md")) as f:
        return f.read()


def test_quickstart_runs_and_learns():
    code = re.search(r"```python\n(.*?)```", _readme(), re.S).group(1)
    ns = {}
    exec(compile(code, "README quickstart", "exec"), ns)
    assert ns["loss"].item() < 0.05


def test_setup_commands_exist_and_ci_runs_the_test_one():
    block = re.search(r"## Set-up.*?```\n(.*?)```", _readme(), re.S).group(1)
    commands = [line.split("#")[0].strip() for line in block.strip().splitlines()]
    assert commands == ["make demo", "make test"]
    with open(os.path.join(ROOT, "Makefile")) as f:
        makefile = f.read()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert "make test" in f.read()
