"""Run the whole BBH search example: generate the data, train the network, evaluate it against
matched filtering.

    python examples/gw_bbh_search/run_all.py --quick --dir /tmp/gw_quick   # smoke test (~1 min CPU, ~3 min wall)
    python examples/gw_bbh_search/run_all.py --dir gw_full                  # the full run of the README

The three steps are the scripts next to this one, called with their defaults (``--quick``
passed through); each can be rerun alone on the files of the previous one. Needs the ``gw``
extra (``pip install avila-ml[gw]``: PyCBC and LALSuite).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import evaluate  # noqa: E402
import generate  # noqa: E402
import train  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default="gw_bbh_search_run", help="where the data, checkpoints and results go")
    ap.add_argument("--quick", action="store_true", help="reduced size for a smoke test")
    args = ap.parse_args(argv)
    os.makedirs(args.dir, exist_ok=True)
    quick = ["--quick"] if args.quick else []
    data = os.path.join(args.dir, "gw_data.h5")
    run, out = os.path.join(args.dir, "run"), os.path.join(args.dir, "eval")
    t0 = time.time()
    generate.main(["--out", data] + quick)
    print(f"[generate done at {time.time() - t0:.0f} s]", flush=True)
    train.main(["--data", data, "--out", run] + quick)
    print(f"[train done at {time.time() - t0:.0f} s]", flush=True)
    evaluate.main(["--data", data, "--run", run, "--out", out] + quick)
    print(f"[all done in {time.time() - t0:.0f} s] results: {os.path.join(out, 'results.md')}")


if __name__ == "__main__":
    main()
