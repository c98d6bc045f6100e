"""Build of the optional C extension ``avila_ml.cpu_accel._kernels``: the element-wise CPU
kernels in ``avila_ml/cpu_accel/kernels/*.c`` (conventions in ``kernels/avila_kernels.h``);
everything else is in pyproject.toml. The extension is optional: where no C compiler is present
the install goes on without it and the NumPy formulas run (``avila_ml.cpu_accel.kernels_available()``
says which). OpenMP (``-fopenmp``) splits large arrays over the threads of the runtime oneDNN
uses too; ``-fno-trapping-math`` lets GCC vectorise a select between two computed values;
``-fno-math-errno`` lets it use the vector square root instead of a libm call per element (sqrt
of a negative number is still NaN; only errno is left unset)."""
from glob import glob

from setuptools import Extension, setup

setup(ext_modules=[Extension("avila_ml.cpu_accel._kernels", sorted(glob("avila_ml/cpu_accel/kernels/*.c")),
                             depends=glob("avila_ml/cpu_accel/kernels/*.h"),
                             extra_compile_args=["-O3", "-fno-trapping-math", "-fno-math-errno", "-fopenmp",
                                                                 "-fvisibility=hidden"],
                             extra_link_args=["-fopenmp"], optional=True)])
