// Entry point of the l2bg._C extension: the Python module object and the op library.
// Ops are registered with TORCH_LIBRARY so they have one schema under torch.ops.l2bg.
#include <torch/extension.h>
#include <torch/library.h>

namespace l2bg {

// Identity-shaped probe op: lets the loader check that the library registered and runs.
at::Tensor probe(const at::Tensor& x) { return x.clone(); }

}  // namespace l2bg

TORCH_LIBRARY(l2bg, m) { m.def("probe(Tensor x) -> Tensor"); }

TORCH_LIBRARY_IMPL(l2bg, CompositeExplicitAutograd, m) { m.impl("probe", &l2bg::probe); }

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) { m.attr("ABI_VERSION") = 1; }
