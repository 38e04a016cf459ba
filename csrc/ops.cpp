// Every op schema of the extension, in one place. Kernels register their implementations per
// device in csrc/cpu and csrc/cuda; fake (meta) impls and autograd live in unet_fast/ops.
#include <Python.h>
#include <c10/util/Exception.h>
#include <torch/library.h>

#include <vector>

#include "cpu/buffer_pool.h"
#include "cpu/fma_peak.h"
#include "cpu/point_gemm.h"
#include "cpu/target_clones.h"
#include "cpu/thread_placement.h"

namespace {

// fn()'s Python result; a c10::Error (a bad setting or argument) raised in Python as `type`.
template <typename Fn>
PyObject* raising_errors_as(PyObject* type, Fn fn) {
  try {
    return fn();
  } catch (const c10::Error& error) {
    PyErr_SetString(type, error.what_without_backtrace());
    return nullptr;
  }
}

// (in use, cached, peak in use) bytes of the CPU buffer pool (csrc/cpu/buffer_pool.h).
PyObject* buffer_pool_stats(PyObject*, PyObject*) {
  const unet_fast::BufferPoolStats stats = unet_fast::buffer_pool_stats();
  return Py_BuildValue("(LLL)", static_cast<long long>(stats.in_use_bytes),
                       static_cast<long long>(stats.cached_bytes), static_cast<long long>(stats.peak_in_use_bytes));
}

PyObject* buffer_pool_empty_cache(PyObject*, PyObject*) {
  unet_fast::buffer_pool_empty_cache();
  Py_RETURN_NONE;
}

PyObject* buffer_pool_set_idle_seconds(PyObject*, PyObject* arg) {
  const double seconds = PyFloat_AsDouble(arg);
  if (seconds == -1.0 && PyErr_Occurred()) return nullptr;
  return raising_errors_as(PyExc_ValueError, [&] {
    unet_fast::buffer_pool_set_idle_seconds(seconds);
    Py_RETURN_NONE;
  });
}

// A guard of the CPU buffer pool (csrc/cpu/buffer_pool.h) for Python: this thread's large CPU
// allocations come from the pool until the returned capsule is freed.
PyObject* buffer_pool_guard(PyObject*, PyObject*) {
  static constexpr const char* kName = "unet_fast.PooledAllocations";
  return raising_errors_as(PyExc_RuntimeError, [&]() -> PyObject* {
    auto* guard = new unet_fast::PooledAllocations();
    PyObject* capsule = PyCapsule_New(guard, kName, [](PyObject* held) {
      delete static_cast<unet_fast::PooledAllocations*>(PyCapsule_GetPointer(held, kName));
    });
    if (capsule == nullptr) delete guard;
    return capsule;
  });
}

// Whether the CPU kernels take their AVX-512 loops and measured choices (docs/winograd.md).
PyObject* cpu_has_avx512(PyObject*, PyObject*) { return PyBool_FromLong(unet_fast::cpu_has_avx512()); }

// "avx512", "avx2" or None: the kernel of the Winograd products (csrc/cpu/point_gemm.h).
PyObject* cpu_point_products_kernel(PyObject*, PyObject*) {
  return raising_errors_as(PyExc_ValueError, []() -> PyObject* {
    const char* name = unet_fast::point_products_kernel();
    if (name == nullptr) Py_RETURN_NONE;
    return PyUnicode_FromString(name);
  });
}

// Bytes of transformed weights up to which point_products multiplies by them (csrc/cpu/point_gemm.h).
PyObject* cpu_point_products_max_weight_bytes(PyObject*, PyObject*) {
  return PyLong_FromLongLong(unet_fast::kPointProductsMaxWeightBytes);
}

// A Python list of `values`, each made by `make`.
template <typename T, typename Make>
PyObject* list_of(const std::vector<T>& values, Make make) {
  PyObject* list = PyList_New(Py_ssize_t(values.size()));
  if (list == nullptr) return nullptr;
  for (size_t i = 0; i < values.size(); ++i) PyList_SET_ITEM(list, Py_ssize_t(i), make(values[i]));
  return list;
}

// [GFLOP/s of each thread] of fp32 multiply-adds, all threads at once for `seconds` (csrc/cpu/fma_peak.h).
PyObject* cpu_fma_peak_gflops(PyObject*, PyObject* arg) {
  const double seconds = PyFloat_AsDouble(arg);
  if (seconds == -1.0 && PyErr_Occurred()) return nullptr;
  return raising_errors_as(PyExc_ValueError,
                           [&] { return list_of(unet_fast::fma_peak_gflops(seconds), PyFloat_FromDouble); });
}

// [CPU] a region of `threads` threads started here now shares out one to a thread, the caller
// keeping the one it runs on: [] where the OS places them (csrc/cpu/thread_placement.h).
PyObject* cpu_placement_cpus(PyObject*, PyObject* arg) {
  const long long threads = PyLong_AsLongLong(arg);
  if (threads == -1 && PyErr_Occurred()) return nullptr;
  return raising_errors_as(PyExc_ValueError, [&] {
    return list_of(unet_fast::placement_cpus(threads), [](int cpu) { return PyLong_FromLong(cpu); });
  });
}

PyObject* cpu_thread_placement(PyObject*, PyObject*) {
  return raising_errors_as(PyExc_ValueError, [] { return PyBool_FromLong(unet_fast::thread_placement_enabled()); });
}

PyObject* cpu_set_thread_placement(PyObject*, PyObject* arg) {
  const int enabled = PyObject_IsTrue(arg);
  if (enabled < 0) return nullptr;
  return raising_errors_as(PyExc_ValueError, [&] {
    unet_fast::set_thread_placement_enabled(enabled != 0);
    Py_RETURN_NONE;
  });
}

PyMethodDef methods[] = {
    {"buffer_pool_stats", buffer_pool_stats, METH_NOARGS, "(in use, cached, peak in use) bytes of the CPU buffer pool"},
    {"buffer_pool_empty_cache", buffer_pool_empty_cache, METH_NOARGS, "frees the pool's cached CPU buffers"},
    {"buffer_pool_set_idle_seconds", buffer_pool_set_idle_seconds, METH_O,
     "seconds a cached CPU buffer may stay idle before the pool frees it"},
    {"buffer_pool_guard", buffer_pool_guard, METH_NOARGS,
     "a capsule: while it lives, this thread's large CPU allocations come from the pool"},
    {"cpu_has_avx512", cpu_has_avx512, METH_NOARGS, "whether the CPU kernels run for AVX-512"},
    {"cpu_point_products_kernel", cpu_point_products_kernel, METH_NOARGS,
     "the kernel of the Winograd products: 'avx512', 'avx2' or None (ATen's GEMM)"},
    {"cpu_point_products_max_weight_bytes", cpu_point_products_max_weight_bytes, METH_NOARGS,
     "bytes of transformed weights up to which that kernel multiplies by them"},
    {"cpu_fma_peak_gflops", cpu_fma_peak_gflops, METH_O,
     "[GFLOP/s of each thread] of fp32 multiply-adds, all threads at once for the given seconds"},
    {"cpu_placement_cpus", cpu_placement_cpus, METH_O,
     "[CPU] a region of the given threads started here shares out one to a thread; [] where the OS places them"},
    {"cpu_thread_placement", cpu_thread_placement, METH_NOARGS, "whether parallel regions hold threads one to a CPU"},
    {"cpu_set_thread_placement", cpu_set_thread_placement, METH_O,
     "whether parallel regions hold threads one to a CPU (UNET_FAST_PIN_THREADS)"},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

extern "C" {
// The extension is loaded as a Python module so that `import unet_fast._C` registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, methods};
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
  // Valid (unpadded) 3x3 convolution, stride 1, with the bias and, if relu, a ReLU applied to
  // its output. The output is channels_last. `algorithm` names how the CPU computes it
  // (csrc/cpu/conv_algorithm.h; unet_fast/tuning.py chooses); the GPU's kernels ignore it.
  m.def("conv3x3_bias_relu(Tensor x, Tensor weight, Tensor? bias, bool relu, str algorithm=\"direct\") -> Tensor");
  // Gradients of x, weight and bias (each only if asked in output_mask, else undefined). `out`
  // is the saved forward output when it went through the ReLU (its mask), else None. The
  // algorithms name how the CPU computes x's and the weight's gradients. relu_input: x is the
  // output of a ReLU, whose backward is applied to x's gradient too (zero where x <= 0), so
  // that neither x nor a masked copy of its gradient need be kept for it.
  m.def(
      "conv3x3_bias_relu_backward(Tensor grad_out, Tensor x, Tensor weight, Tensor? out, "
      "bool[3] output_mask, str data_algorithm=\"direct\", str weight_algorithm=\"direct\", "
      "bool relu_input=False) -> (Tensor, Tensor, Tensor)");
  // conv3x3_bias_relu(crop_concat(up, skip), weight, bias, relu), without keeping the join.
  m.def(
      "crop_concat_conv3x3(Tensor up, Tensor skip, Tensor weight, Tensor? bias, bool relu, "
      "str algorithm=\"direct\") -> Tensor");
  // Gradients of up, skip, weight and bias (each only if asked in output_mask, else undefined),
  // each source's part by the algorithms named for its data and weight gradients.
  m.def(
      "crop_concat_conv3x3_backward(Tensor grad_out, Tensor up, Tensor skip, Tensor weight, Tensor? out, "
      "bool[4] output_mask, str up_data_algorithm=\"direct\", str skip_data_algorithm=\"direct\", "
      "str up_weight_algorithm=\"direct\", str skip_weight_algorithm=\"direct\") "
      "-> (Tensor, Tensor, Tensor, Tensor)");
  // 2x2 max-pool, stride 2 (a last odd row or column is dropped), keeping no indices.
  m.def("max_pool2x2(Tensor x) -> Tensor");
  // The input's gradient: each output's gradient goes to the first maximum of its window,
  // found again from x and the saved output; zero elsewhere.
  m.def("max_pool2x2_backward(Tensor grad_out, Tensor x, Tensor out) -> Tensor");
  // The 2x2 stride-2 transposed convolution of the decoder, weight (C_in, C_out, 2, 2) as in
  // nn.ConvTranspose2d. The output is channels_last.
  m.def("up_conv2x2(Tensor x, Tensor weight, Tensor? bias) -> Tensor");
  // Gradients of x, weight and bias (each only if asked in output_mask, else undefined).
  m.def(
      "up_conv2x2_backward(Tensor grad_out, Tensor x, Tensor weight, bool[3] output_mask) "
      "-> (Tensor, Tensor, Tensor)");
}
