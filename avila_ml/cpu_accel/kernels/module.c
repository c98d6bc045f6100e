/* The importable module of the compiled kernels (setuptools builds extensions as modules). It
 * defines no Python functions: the kernels are the exported C symbols of the other files in this
 * directory, bound by name through ctypes (avila_ml/cpu_accel/_native.py). */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Element-wise CPU kernels of Avila ML, called through ctypes (avila_ml.cpu_accel._native).",
    -1, NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
