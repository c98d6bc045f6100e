"""Start N processes of a script on this machine: ``python -m avila_ml.distributed.run -n 2 script.py [args]``.

It runs ``mpiexec -n N python script.py [args]`` with the MPI launcher that came with mpi4py's
MPICH (next to this Python, else the first ``mpiexec`` on PATH); each process then calls
:func:`avila_ml.distributed.init_process_group`. On a cluster use ``srun --mpi=pmix`` instead
(see ``examples/slurm/train.sbatch``). PyTorch's nearest equivalent is ``torchrun
--nproc-per-node N``.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys

__all__ = ["find_mpiexec", "build_command", "main"]


def find_mpiexec() -> str:
    """Path of the ``mpiexec`` to use: next to this Python first (the ``mpich`` wheel), then PATH.

    Example:
        >>> from avila_ml.distributed.run import find_mpiexec
        >>> find_mpiexec().endswith("mpiexec")
        True
    """
    here = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    if os.path.exists(here):
        return here
    found = shutil.which("mpiexec") or shutil.which("mpirun")
    if found is None:
        raise FileNotFoundError("avila_ml.distributed.run: no mpiexec found; install one with "
                                "`pip install avila-ml[distributed]` (the mpich wheel)")
    return found


def build_command(nproc: int, script: str, args, mpiexec: str | None = None) -> list[str]:
    """The launcher command line for ``nproc`` processes of ``script``.

    Example:
        >>> from avila_ml.distributed.run import build_command
        >>> build_command(2, "train.py", ["--quick"], mpiexec="mpiexec")[:3]
        ['mpiexec', '-n', '2']
    """
    if isinstance(nproc, bool) or not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"avila_ml.distributed.run: -n must be a positive integer, got {nproc!r}")
    return [mpiexec or find_mpiexec(), "-n", str(nproc), sys.executable, script, *args]


def main(argv=None) -> None:
    """Parse ``-n N script.py [args]`` and replace this process by the launcher.

    The entry point of ``python -m avila_ml.distributed.run`` (as ``torch.distributed.run.main``
    is that of ``torchrun``). On success it does not return: the process becomes
    ``build_command(...)``'s launcher; a bad command line exits with status 2.

    Example:
        >>> from avila_ml.distributed.run import main
        >>> try:
        ...     main(["-n", "two", "train.py"])  # -n must be an integer
        ... except SystemExit as e:
        ...     print("exit status", e.code)
        exit status 2
    """
    parser = argparse.ArgumentParser(prog="python -m avila_ml.distributed.run", description=__doc__.splitlines()[0])
    parser.add_argument("-n", "--nproc-per-node", dest="n", type=int, default=1, help="number of processes")
    parser.add_argument("--mpiexec", default=None, help="launcher to use (default: the one next to python)")
    parser.add_argument("script")
    parser.add_argument("args", nargs=argparse.REMAINDER)
    ns = parser.parse_args(argv)
    cmd = build_command(ns.n, ns.script, ns.args, ns.mpiexec)
    sys.stdout.flush()
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    main()
