// Makes vgm2p_fast._C an importable Python module: `import vgm2p_fast._C` loads this library,
// whose static TORCH_LIBRARY initialisers register the ops under torch.ops.vgm2p_fast. No Python
// bindings are needed (the pattern of pytorch/extension-cpp).
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}
