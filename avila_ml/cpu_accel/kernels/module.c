/* The importable module of the compiled kernels (setuptools builds extensions as modules). The
 * kernels are the exported C symbols of the other files in this directory, bound by name through
 * ctypes (avila_ml/cpu_accel/_native.py); the module itself has one function, address(), which
 * the wrappers use to hand an array's data pointer to those calls. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

/* address(obj): the address of the first element of any object exporting a buffer (a NumPy
 * array, strided or not), as an int. NumPy's a.ctypes.data builds a ctypes helper object per
 * access (~2 us on the 2-core AMD EPYC); this takes ~0.13 us. The buffer is released before
 * returning: the caller keeps the object alive while the pointer is in use, as with ctypes. */
static PyObject *address(PyObject *self, PyObject *obj) {
    (void)self;
    Py_buffer view;
    /* strides allowed, read-only allowed, no format asked (any dtype, bfloat16 included) */
    if (PyObject_GetBuffer(obj, &view, PyBUF_STRIDES) != 0) return NULL;
    PyObject *out = PyLong_FromVoidPtr(view.buf);
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef kernels_methods[] = {
    {"address", address, METH_O, "address(array) -> int: the address of the array's first element."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef kernels_module = {
    PyModuleDef_HEAD_INIT, "_kernels",
    "Element-wise CPU kernels of Avila ML, called through ctypes (avila_ml.cpu_accel._native).",
    -1, kernels_methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit__kernels(void) { return PyModule_Create(&kernels_module); }
