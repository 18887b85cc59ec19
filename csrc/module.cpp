// The Python module `gconv_ext._C`. Importing it runs the static operator registrations in the other
// translation units; it also reports how the extension was built.
#include <Python.h>

#ifndef GCONV_EXT_TORCH_VERSION
#define GCONV_EXT_TORCH_VERSION "unknown"
#endif
#ifndef GCONV_EXT_CUDA_VERSION
#define GCONV_EXT_CUDA_VERSION ""
#endif
#ifndef GCONV_EXT_CUDA_ARCHS
#define GCONV_EXT_CUDA_ARCHS ""
#endif

static struct PyModuleDef gconv_ext_module = {PyModuleDef_HEAD_INIT, "_C",
                                              "gconv_ext compiled operators (registered on import).", -1, nullptr};

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
