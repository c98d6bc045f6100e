"""The documentation holds: every public name is in the API reference and has a docstring with
a runnable example, and the Python snippets of the guides run.

The public API is found by importing the package (``docs/api_inventory.py``, the same code the
MkDocs hook uses to write the reference), so a module or name added later is checked without
editing this file.
"""
import glob
import importlib
import inspect
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "docs"))
import api_inventory  # noqa: E402


def _canonical_names():
    """(module, name, object) for every public name, once, in the module that documents it."""
    for module, items in api_inventory.inventory().items():
        mod = importlib.import_module(module)
        for name, home in items:
            if home == module:
                yield module, name, getattr(mod, name)


def test_the_inventory_finds_the_public_api():
    inv = api_inventory.inventory()
    for module in ("avila_ml", "avila_ml.nn", "avila_ml.nn.functional", "avila_ml.optim", "avila_ml.data",
                   "avila_ml.autograd", "avila_ml.optim.lr_scheduler", "avila_ml.nn.init"):
        assert module in inv, module
    names = dict(inv["avila_ml"])
    assert names["exp"] == "avila_ml.ops.elementwise" and names["Tensor"] == "avila_ml.tensor"
    assert dict(inv["avila_ml.nn"])["Conv4d"] == "avila_ml.nn.modules.conv"
    assert not any(m.split(".")[-1].startswith("_") for m in inv)


def test_every_public_name_has_a_docstring_with_an_example():
    missing = []
    for module, name, obj in _canonical_names():
        if api_inventory.is_internal(module) or not api_inventory.needs_example(obj):
            continue
        doc = inspect.getdoc(obj) or ""
        if ">>>" not in doc:
            missing.append(f"{module}.{name}")
    assert not missing, f"{len(missing)} public names without a docstring example (>>>): {missing}"


@pytest.mark.slow
def test_the_reference_documents_every_public_name(tmp_path):
    """Build the site (as ``make docs`` does, --strict) and find an anchor for every name."""
    pytest.importorskip("mkdocs")
    # in a fresh process, as `make docs` runs it: the reference inspects the imported package,
    # which other tests of this session may have patched
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=1200,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])})
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    pages = {}
    missing = []
    for module, items in api_inventory.inventory().items():
        for name, home in items:
            if home not in pages:
                with open(tmp_path / "site" / "reference" / home / "index.html") as f:
                    pages[home] = f.read()
            if f'id="{home}.{name}"' not in pages[home]:
                missing.append(f"{module}.{name} (expected in {home})")
            if home != module:
                if module not in pages:
                    with open(tmp_path / "site" / "reference" / module / "index.html") as f:
                        pages[module] = f.read()
                if f'href="../{home}/#{home}.{name}"' not in pages[module]:
                    missing.append(f"{module}.{name} (no link to {home})")
    assert not missing, f"{len(missing)} public names missing from the reference: {missing[:50]}"


def test_as_torch_leaves_avila_ml_its_own_spec():
    """``import torch`` under ``as_torch`` once left ``avila_ml.__spec__`` naming ``torch`` for the
    rest of the process; griffe then read the functions defined in ``avila_ml/__init__.py``
    (is_tensor, numel, initial_seed) as re-exports from ``torch`` and left them out of the
    reference built in such a process."""
    import avila_ml as am
    from avila_ml import as_torch
    as_torch.install()
    try:
        import torch
        import torch.nn.functional
        assert torch is am and torch.nn.functional is am.nn.functional
    finally:
        as_torch.uninstall()
    assert am.__spec__.name == "avila_ml"
    assert am.nn.__spec__.name == "avila_ml.nn" and am.nn.functional.__spec__.name == "avila_ml.nn.functional"
    griffe = pytest.importorskip("griffe")
    members = griffe.inspect("avila_ml").members
    assert [n for n in ("is_tensor", "numel", "initial_seed") if members[n].is_alias] == []


def _snippets(path):
    """The ```python blocks of a Markdown page, minus those whose first line is '# not run'."""
    with open(path) as f:
        blocks = re.findall(r"^```python\n(.*?)^```", f.read(), re.S | re.M)
    return [b for b in blocks if not b.lstrip().startswith("# not run")]


GUIDES = sorted(glob.glob(os.path.join(ROOT, "docs", "**", "*.md"), recursive=True))


@pytest.mark.parametrize("page", [p for p in GUIDES if _snippets(p)], ids=lambda p: os.path.relpath(p, ROOT))
def test_guide_snippets_run(page, tmp_path, monkeypatch):
    """Every runnable snippet of a page, in order, in one namespace (as a reader would paste them)."""
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    ns = {"__name__": "__guide__"}
    for i, code in enumerate(_snippets(page)):
        exec(compile(code, f"{os.path.relpath(page, ROOT)} snippet {i + 1}", "exec"), ns)
