"""Build of the optional C extension ``avila_ml.cpu_accel._kernels`` (fused element-wise CPU
kernels, ``avila_ml/cpu_accel/_kernels.c``); everything else is in pyproject.toml. The extension
is optional: where no C compiler is present the install goes on without it and the NumPy
formulas run (``avila_ml.cpu_accel.kernels_available()`` says which). OpenMP (``-fopenmp``) splits
large arrays over the threads of the runtime oneDNN uses too."""
from setuptools import Extension, setup

setup(ext_modules=[Extension("avila_ml.cpu_accel._kernels", ["avila_ml/cpu_accel/_kernels.c"],
                             extra_compile_args=["-O3", "-fno-trapping-math", "-fopenmp", "-fvisibility=hidden"],
                             extra_link_args=["-fopenmp"], optional=True)])
