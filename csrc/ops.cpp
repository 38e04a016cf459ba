// Every op schema of the extension, in one place. Kernels register their implementations per
// device in csrc/cpu and csrc/cuda; fake (meta) impls and autograd live in unet_fast/ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// The extension is loaded as a Python module so that `import unet_fast._C` registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

TORCH_LIBRARY(unet_fast, m) {
  // cat([up, centre_crop(skip, up's H, W)], dim=1)
  m.def("crop_concat(Tensor up, Tensor skip) -> Tensor");
  // The gradient of skip: the skip channels of grad_out (those from up_channels on) placed
  // in the cropped window of a skip-sized tensor that is zero elsewhere. up's gradient is a
  // view of grad_out and needs no kernel.
  m.def(
      "crop_concat_backward(Tensor grad_out, int up_channels, SymInt skip_height, "
      "SymInt skip_width) -> Tensor");
  // The paper's pixel-weighted softmax cross-entropy (definitions in
  // unet_fast/ops/weighted_cross_entropy.py). Returns the loss and, if compute_grad, its
  // gradient with respect to logits for grad_output = 1, computed in the same pass.
  m.def(
      "weighted_softmax_cross_entropy(Tensor logits, Tensor target, Tensor? weight, "
      "Tensor? class_weight, int ignore_index, str reduction, bool compute_grad) "
      "-> (Tensor, Tensor)");
}
