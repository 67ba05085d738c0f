// The only Python entry point: an empty module whose import loads libcompressops_ops (which
// registers every op with the dispatcher). Limited API, so one build serves Python >= 3.10.
#define Py_LIMITED_API 0x030A0000
#include <Python.h>

extern "C" int compressops_ops_abi_version();

extern "C" PyMODINIT_FUNC PyInit__C(void) {
  static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_C", "compressops native ops", -1, nullptr,
                                   nullptr, nullptr, nullptr, nullptr};
  PyObject* mod = PyModule_Create(&def);
  if (mod) PyModule_AddIntConstant(mod, "ABI_VERSION", compressops_ops_abi_version());
  return mod;
}
