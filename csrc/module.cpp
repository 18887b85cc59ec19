// The Python module `gconv_ext._C`. Importing it runs the static operator registrations in the other
// translation units; it also reports how the extension was built, and which variant of the CPU loops runs
// (cpu/cpu_kernels.h).
#include <Python.h>

#include "cpu/cpu_kernels.h"

#ifndef GCONV_EXT_TORCH_VERSION
#define GCONV_EXT_TORCH_VERSION "unknown"
#endif
#ifndef GCONV_EXT_CUDA_VERSION
#define GCONV_EXT_CUDA_VERSION ""
#endif
#ifndef GCONV_EXT_CUDA_ARCHS
#define GCONV_EXT_CUDA_ARCHS ""
#endif

static PyObject* cpu_capability(PyObject*, PyObject*) { return PyUnicode_FromString(gconv_ext::cpu_kernels().name); }

static PyObject* supported_cpu_capabilities(PyObject*, PyObject*) {
  int n = 0;
  const char* const* names = gconv_ext::supported_cpu_capabilities(&n);
  PyObject* t = PyTuple_New(n);
  if (t == nullptr) return nullptr;
  for (int i = 0; i < n; ++i) {
    PyObject* s = PyUnicode_FromString(names[i]);
    if (s == nullptr) {
      Py_DECREF(t);
      return nullptr;
    }
    PyTuple_SET_ITEM(t, i, s);
  }
  return t;
}

static PyObject* set_cpu_capability(PyObject*, PyObject* arg) {
  const char* name = PyUnicode_AsUTF8(arg);
  if (name == nullptr) return nullptr;  // not a str: TypeError already set
  if (!gconv_ext::set_cpu_capability(name)) {
    PyObject* supported = supported_cpu_capabilities(nullptr, nullptr);
    if (supported == nullptr) return nullptr;
    PyErr_Format(PyExc_ValueError,
                 "gconv_ext: name must be a CPU capability that this build and CPU support, one of %R, got '%s'",
                 supported, name);
    Py_DECREF(supported);
    return nullptr;
  }
  Py_RETURN_NONE;
}

static PyMethodDef gconv_ext_methods[] = {
    {"cpu_capability", cpu_capability, METH_NOARGS,
     "The variant of the CPU loops in use: 'default', 'avx2' or 'avx512' (the best this CPU supports, lowered by "
     "GCONV_EXT_CPU_CAPABILITY at import)."},
    {"supported_cpu_capabilities", supported_cpu_capabilities, METH_NOARGS,
     "The variants of the CPU loops that this build has and this CPU can run, lowest first."},
    {"set_cpu_capability", set_cpu_capability, METH_O,
     "set_cpu_capability(name): run the CPU loops' variant `name` from now on (every variant gives bit-identical "
     "results; for tests and benchmarks). ValueError for a name not in supported_cpu_capabilities()."},
    {nullptr, nullptr, 0, nullptr}};

static struct PyModuleDef gconv_ext_module = {PyModuleDef_HEAD_INIT, "_C",
                                              "gconv_ext compiled operators (registered on import).", -1,
                                              gconv_ext_methods};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* m = PyModule_Create(&gconv_ext_module);
  if (m == nullptr) return nullptr;
#ifdef GCONV_EXT_WITH_CUDA
  const int with_cuda = 1;
#else
  const int with_cuda = 0;
#endif
  if (PyModule_AddIntConstant(m, "WITH_CUDA", with_cuda) < 0 ||
      PyModule_AddStringConstant(m, "TORCH_VERSION", GCONV_EXT_TORCH_VERSION) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_VERSION", GCONV_EXT_CUDA_VERSION) < 0 ||
      PyModule_AddStringConstant(m, "CUDA_ARCHS", GCONV_EXT_CUDA_ARCHS) < 0) {
    Py_DECREF(m);
    return nullptr;
  }
  return m;
}
