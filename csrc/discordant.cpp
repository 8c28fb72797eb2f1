// Discordant pairs of integer sequences, the O(m log m) core of Kendall's tau (l2bg.rsa).
//
//   l2bg::count_discordant(Tensor seq, int span) -> Tensor
//
// seq: (P, m) int32 or int64 on the CPU, values in [0, span). Returns (P,) int64: per row, the
// number of pairs i < j with seq[i] > seq[j] (equal values are not discordant).
//
// Per row: a Fenwick tree over the values counts, for each element, the earlier elements that
// are not greater (i - that count are greater). Many rows run one per thread. A single long row
// is cut into one chunk per thread: each chunk counts its own pairs with its own tree, and the
// pairs across chunks come from histograms of the earlier chunks, prefix-summed over values.
// Reference (the spec): l2bg.rsa.comparisons.count_discordant_torch.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <vector>

namespace l2bg {

namespace {

// Tree slot of Fenwick index k: one spare slot every 2^14 keeps the power-of-two strides of
// the tree walks from mapping onto the same cache sets.
inline int64_t slot(int64_t k) { return k + (k >> 14); }

// Pairs i < j in v[0:n] with v[i] > v[j]; values in [0, span).
template <typename T>
int64_t fenwick_count(const T* v, int64_t n, int64_t span) {
  std::vector<int32_t> tree(slot(span) + 1, 0);
  int32_t* t = tree.data();
  int64_t count = 0;
  for (int64_t i = 0; i < n; ++i) {
    const int64_t key = int64_t(v[i]) + 1;
    int64_t not_greater = 0;
    for (int64_t k = key; k > 0; k &= k - 1) not_greater += t[slot(k)];
    count += i - not_greater;
    for (int64_t k = key; k <= span; k += k & -k) ++t[slot(k)];
  }
  return count;
}

// One long row split over the threads (see the header).
template <typename T>
int64_t chunked_count(const T* v, int64_t m, int64_t span, int64_t chunks) {
  const int64_t size = (m + chunks - 1) / chunks;
  std::vector<int64_t> within(chunks, 0), across(chunks, 0);
  // below[c][x]: elements of chunks < c with value <= x (c >= 1).
  std::vector<std::vector<int32_t>> below(chunks);
  at::parallel_for(0, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      const int64_t lo = c * size, hi = std::min(m, lo + size);
      within[c] = lo < hi ? fenwick_count(v + lo, hi - lo, span) : 0;
      if (c + 1 < chunks) {
        below[c + 1].assign(span, 0);
        for (int64_t i = lo; i < hi; ++i) ++below[c + 1][v[i]];
      }
    }
  });
  for (int64_t c = 2; c < chunks; ++c)  // histograms of chunk c-1 -> of all chunks below c
    for (int64_t x = 0; x < span; ++x) below[c][x] += below[c - 1][x];
  at::parallel_for(1, chunks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      auto& h = below[c];
      for (int64_t x = 1; x < span; ++x) h[x] += h[x - 1];
      const int64_t lo = c * size, hi = std::min(m, lo + size);
      int64_t count = 0;
      for (int64_t i = lo; i < hi; ++i) count += lo - h[v[i]];
      across[c] = count;
    }
  });
  int64_t total = 0;
  for (int64_t c = 0; c < chunks; ++c) total += within[c] + across[c];
  return total;
}

at::Tensor count_discordant(const at::Tensor& seq, int64_t span) {
  TORCH_CHECK_VALUE(seq.dim() == 2, "count_discordant: expected (P, m), got ", seq.sizes());
  TORCH_CHECK_VALUE(seq.device().is_cpu(), "count_discordant: expected a CPU tensor");
  TORCH_CHECK_VALUE(seq.scalar_type() == at::kInt || seq.scalar_type() == at::kLong,
      "count_discordant: expected int32 or int64, got ", seq.scalar_type());
  auto x = seq.contiguous();
  const int64_t p = x.size(0), m = x.size(1);
  auto out = at::zeros({p}, x.options().dtype(at::kLong));
  if (p == 0 || m < 2) return out;
  auto [lo, hi] = at::aminmax(x);
  TORCH_CHECK_VALUE(lo.item<int64_t>() >= 0 && hi.item<int64_t>() < span,
      "count_discordant: values must lie in [0, span)");
  auto* res = out.data_ptr<int64_t>();
  const int64_t threads = at::get_num_threads();
  AT_DISPATCH_INDEX_TYPES(x.scalar_type(), "count_discordant", [&] {
    const auto* data = x.data_ptr<index_t>();
    if (p >= threads || m < (int64_t(1) << 15)) {
      at::parallel_for(0, p, 1, [&](int64_t begin, int64_t end) {
        for (int64_t r = begin; r < end; ++r) res[r] = fenwick_count(data + r * m, m, span);
      });
    } else {
      const int64_t chunks = std::min(threads, m >> 14);
      for (int64_t r = 0; r < p; ++r) res[r] = chunked_count(data + r * m, m, span, chunks);
    }
  });
  return out;
}

}  // namespace

}  // namespace l2bg

TORCH_LIBRARY_FRAGMENT(l2bg, m) { m.def("count_discordant(Tensor seq, int span) -> Tensor"); }

TORCH_LIBRARY_IMPL(l2bg, CPU, m) { m.impl("count_discordant", &l2bg::count_discordant); }
