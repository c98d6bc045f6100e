"""Count how many names of ``torch_names.txt`` (commonly used PyTorch names) exist in Avila ML.

``torch.X.Y`` is looked up as ``avila_ml.X.Y`` attribute by attribute (importing submodules
where an attribute is missing), so ``torch.Tensor.add_`` checks ``avila_ml.Tensor.add_`` and
``torch.utils.data.DataLoader`` checks ``avila_ml.utils.data.DataLoader``. A name counts when
it resolves; whether it behaves like PyTorch's is the test suite's job. Writes the missing
names to ``torch_names_missing.txt`` next to this file and prints the share.

Run: ``python benchmarks/compat/count_torch_names.py`` (from the repository root).
"""
from __future__ import annotations

import importlib
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def resolves(dotted: str) -> bool:
    """True when ``avila_ml.<rest of dotted>`` exists."""
    parts = dotted.split(".")
    if parts[0] != "torch":
        raise ValueError(f"names must start with 'torch.', got {dotted!r}")
    parts[0] = "avila_ml"
    obj = importlib.import_module("avila_ml")
    for i, part in enumerate(parts[1:], 1):
        if hasattr(obj, part):
            obj = getattr(obj, part)
            continue
        try:
            obj = importlib.import_module(".".join(parts[: i + 1]))
        except ImportError:
            return False
    return True


def main() -> int:
    with open(os.path.join(HERE, "torch_names.txt")) as f:
        names = [ln.strip() for ln in f if ln.strip() and not ln.startswith("#")]
    missing = [n for n in names if not resolves(n)]
    found = len(names) - len(missing)
    with open(os.path.join(HERE, "torch_names_missing.txt"), "w") as f:
        f.write("# names of torch_names.txt that do not exist in avila_ml (written by count_torch_names.py)\n")
        f.write("\n".join(missing) + ("\n" if missing else ""))
    print(f"{found} of {len(names)} commonly used PyTorch names exist in Avila ML ({100.0 * found / len(names):.1f}%); "
          f"{len(missing)} missing, listed in benchmarks/compat/torch_names_missing.txt")
    return 0


if __name__ == "__main__":
    sys.exit(main())
