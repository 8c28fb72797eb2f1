// Entry point of the l2bg._C extension: the Python module object and the op library.
//
// Registration: TORCH_LIBRARY ops in the `l2bg` namespace rather than pybind11 functions. Each
// op has one schema under torch.ops.l2bg, the executor is a CompositeImplicitAutograd kernel
// (so autograd, CPU/CUDA dispatch and fake-tensor tracing all work through the ATen ops it calls,
// with no backward or fake kernel to maintain), and the plan travels as plain int lists that
// tracing can treat as constants. pybind11 only provides the module object that Python imports.
//
//   l2bg::probe(Tensor x) -> Tensor            smoke test of the build (a copy of x)
//   l2bg::plan(...) -> int[]                   the router (plan.cpp), no tensors involved
//   l2bg::run_plan(...) -> Tensor[]            the executor (executor.cpp)
//   l2bg::count_discordant(Tensor seq, int span) -> Tensor   Kendall's discordant pairs
#include <ATen/core/Tensor.h>
#include <torch/library.h>

#include <pybind11/pybind11.h>

#include <stdexcept>

#include "l2bg.h"

namespace l2bg {

// Changes whenever an op's schema or the plan format changes; the Python loader refuses a stale
// build with a different number.
constexpr int64_t kAbiVersion = 3;

std::vector<at::Tensor> run_plan(at::IntArrayRef program, at::IntArrayRef layers,
    at::ArrayRef<double> fargs, at::IntArrayRef flags, at::TensorList inputs,
    const c10::List<std::optional<at::Tensor>>& params);

namespace {

at::Tensor probe(const at::Tensor& x) { return x.clone(); }

std::vector<int64_t> plan_op(at::IntArrayRef routes, int64_t num_slots,
    at::IntArrayRef slot_params, int64_t head_params, bool per_task, at::IntArrayRef capture) {
  try {
    return compile_plan(
        routes.vec(), num_slots, slot_params.vec(), head_params, per_task, capture.vec());
  } catch (const std::invalid_argument& e) {
    TORCH_CHECK_VALUE(false, e.what());
  }
}

}  // namespace

}  // namespace l2bg

TORCH_LIBRARY(l2bg, m) {
  m.def("probe(Tensor x) -> Tensor");
  m.def("plan(int[] routes, int num_slots, int[] slot_params, int head_params, bool per_task, "
        "int[] capture) -> int[]");
  m.def("run_plan(int[] program, int[] layers, float[] fargs, int[] flags, Tensor[] inputs, "
        "Tensor?[] params) -> Tensor[]");
}

TORCH_LIBRARY_IMPL(l2bg, CompositeExplicitAutograd, m) { m.impl("probe", &l2bg::probe); }

TORCH_LIBRARY_IMPL(l2bg, CompositeImplicitAutograd, m) {
  m.impl("plan", &l2bg::plan_op);
  m.impl("run_plan", &l2bg::run_plan);
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.attr("ABI_VERSION") = l2bg::kAbiVersion; }
