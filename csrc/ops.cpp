// The hierparse library (schemas: op_schemas.h); the kernels live in cpu/ and cuda/.
#include <Python.h>
#include <torch/library.h>

#include "op_schemas.h"

extern "C" {
// An empty module so that `import hierparse._C` loads this library and runs its registrations.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(hierparse, m) { hierparse::define_ops(m); }
