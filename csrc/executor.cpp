// Executor: runs a compiled plan (format in l2bg.h) with ATen ops, reading the JointNet's own
// parameters (the params list holds the nn.Parameters themselves, no copies).
//
// It is registered as a CompositeImplicitAutograd kernel: every ATen op it calls dispatches on
// its own (CPU or CUDA, autograd when grad mode is on, fake tensors under tracing), so the op
// needs no backward, no fake kernel and no device-specific code.
//
// On CPU without autograd, linear layers over many rows run in row blocks (see blocked_linear).
//
// Equality with the per-task loop holds in eval mode. In train mode a deduplicated node is run
// once: batch-norm statistics are computed over (and running stats updated once from) all the
// rows it sees, and one dropout mask is drawn for them, unlike one update/draw per task.

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <algorithm>

#include "l2bg.h"

namespace l2bg {

namespace {

struct LayerOp {
  int64_t kind;
  const int64_t* args;  // the kind's integer arguments inside the layers list
  int64_t stateful_bit;  // bit in the node's flags, -1 for stateless layers
};

struct Slot {
  std::vector<LayerOp> layers;
};

int64_t num_args(int64_t kind) {
  switch (kind) {
    case layer::kConv2d:
      return 7;
    case layer::kBasicBlock:
      return 17;
    case layer::kMaxPool2d:
      return 9;
    case layer::kFlatten:
      return 2;
    case layer::kBatchNorm:
    case layer::kDropout:
    case layer::kGlobalAvgPool:
      return 1;
    default:
      return 0;
  }
}

// Training-flag bits a layer takes (batch norms and dropouts, one each).
int64_t num_flags(int64_t kind) {
  switch (kind) {
    case layer::kBatchNorm:
    case layer::kDropout:
      return 1;
    case layer::kBasicBlock:
      return 2;
    default:
      return 0;
  }
}

int64_t num_params(int64_t kind) {
  switch (kind) {
    case layer::kLinear:
    case layer::kConv2d:
      return 2;
    case layer::kBatchNorm:
      return 5;
    case layer::kBasicBlock:
      return 14;
    default:
      return 0;
  }
}

std::vector<Slot> decode_layers(at::IntArrayRef layers, int64_t num_slots) {
  TORCH_CHECK(!layers.empty() && layers[0] == num_slots,
      "l2bg.run_plan: layers describe ", layers.empty() ? 0 : layers[0],
      " slots, the plan ", num_slots);
  std::vector<Slot> slots(num_slots);
  size_t i = 1;
  for (auto& slot : slots) {
    TORCH_CHECK(i < layers.size(), "l2bg.run_plan: layers list is truncated");
    int64_t n = layers[i++];
    int64_t stateful = 0;
    for (int64_t j = 0; j < n; ++j) {
      TORCH_CHECK(i < layers.size(), "l2bg.run_plan: layers list is truncated");
      int64_t kind = layers[i++];
      TORCH_CHECK(kind >= 0 && kind < layer::kNumKinds, "l2bg.run_plan: unknown layer kind ",
          kind);
      TORCH_CHECK(i + num_args(kind) <= layers.size(), "l2bg.run_plan: layers list is truncated");
      int64_t bits = num_flags(kind);
      slot.layers.push_back({kind, layers.data() + i, bits > 0 ? stateful : -1});
      stateful += bits;
      i += num_args(kind);
    }
  }
  TORCH_CHECK(i == layers.size(), "l2bg.run_plan: layers list has trailing entries");
  return slots;
}

std::optional<at::Tensor> opt(const at::Tensor& t) {
  return t.defined() ? std::optional<at::Tensor>(t) : std::nullopt;
}

// Linear layers on CPU without autograd run as GEMMs of at most kRowBlock rows written straight
// into their rows of the output: one GEMM over many thousand rows runs slower (about 25% with
// MKL here) than the same rows in blocks, and gathered rows need no concatenated copy.
// Pieces smaller than kMinDirect rows are concatenated first so small batches still share one
// GEMM (reading the weights once).
constexpr int64_t kRowBlock = 1024;
constexpr int64_t kMinDirect = 256;

bool blocked_linear_applies(const std::vector<at::Tensor>& pieces, const at::Tensor& w,
    const at::Tensor& b) {
  int64_t rows = 0;
  for (const at::Tensor& t : pieces) {
    if (!t.is_cpu() || t.dim() != 2) {
      return false;
    }
    rows += t.size(0);
  }
  if (!w.is_cpu() || (pieces.size() == 1 && rows <= kRowBlock)) {
    return false;
  }
  if (c10::GradMode::is_enabled()) {  // out= ops record no autograd
    if (w.requires_grad() || (b.defined() && b.requires_grad())) {
      return false;
    }
    for (const at::Tensor& t : pieces) {
      if (t.requires_grad()) {
        return false;
      }
    }
  }
  return true;
}

// x @ w.T + b over the rows of `pieces` taken in order, as the concatenation would give it.
at::Tensor blocked_linear(const std::vector<at::Tensor>& pieces, const at::Tensor& w,
    const at::Tensor& b) {
  int64_t rows = 0;
  for (const at::Tensor& t : pieces) {
    rows += t.size(0);
  }
  at::Tensor out = at::empty({rows, w.size(0)}, pieces[0].options());
  const at::Tensor wt = w.t();
  int64_t done = 0;
  auto gemm = [&](const at::Tensor& src) {
    for (int64_t r = 0; r < src.size(0); r += kRowBlock) {
      int64_t n = std::min(kRowBlock, src.size(0) - r);
      at::Tensor dst = out.narrow(0, done + r, n);
      if (b.defined()) {
        at::addmm_out(dst, b, src.narrow(0, r, n), wt);
      } else {
        at::mm_out(dst, src.narrow(0, r, n), wt);
      }
    }
    done += src.size(0);
  };
  std::vector<at::Tensor> pending;
  int64_t pending_rows = 0;
  auto flush = [&]() {
    if (!pending.empty()) {
      gemm(pending.size() == 1 ? pending[0] : at::cat(pending, 0));
      pending.clear();
      pending_rows = 0;
    }
  };
  for (const at::Tensor& t : pieces) {
    if (t.size(0) >= kMinDirect) {
      flush();
      gemm(t);
    } else {
      pending.push_back(t);
      pending_rows += t.size(0);
      if (pending_rows >= kRowBlock) {
        flush();
      }
    }
  }
  flush();
  return out;
}

at::Tensor linear(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b) {
  std::vector<at::Tensor> pieces{x};
  return blocked_linear_applies(pieces, w, b) ? blocked_linear(pieces, w, b)
                                              : at::linear(x, w, opt(b));
}

// Batch norm with the parameter entries p[0..4] (weight, bias, running_mean, running_var,
// num_batches_tracked) and fargs[f], fargs[f + 1] (eps, momentum), as nn.BatchNorm does.
at::Tensor batch_norm(const at::Tensor& x, const at::Tensor* p, at::ArrayRef<double> fargs,
    int64_t f, bool train) {
  const at::Tensor& mean = p[2];
  const at::Tensor& var = p[3];
  const at::Tensor& tracked = p[4];
  double eps = fargs[f];
  double momentum = fargs[f + 1];
  bool tracking = mean.defined() && var.defined();
  if (train && tracking && tracked.defined()) {
    // As nn.BatchNorm: count the batch, momentum None means a cumulative average.
    tracked.add_(1);
    if (momentum < 0) {
      momentum = 1.0 / tracked.item<double>();
    }
  }
  if (momentum < 0) {
    momentum = 0.0;
  }
  return at::batch_norm(x, opt(p[0]), opt(p[1]), opt(mean), opt(var), train || !tracking,
      momentum, eps, at::globalContext().userEnabledCuDNN());
}

at::Tensor conv2d(const at::Tensor& x, const at::Tensor& w, const at::Tensor& b,
    const int64_t* a) {
  return at::conv2d(x, w, opt(b), {a[0], a[1]}, {a[2], a[3]}, {a[4], a[5]}, a[6]);
}

// The residual basic block (l2bg/net/blocks.py): parameters p[0..13], arguments `a` and the
// training flags of bn1 and bn2 (see l2bg.h).
at::Tensor basic_block(const at::Tensor& x, const at::Tensor* p, const int64_t* a,
    at::ArrayRef<double> fargs, bool train1, bool train2) {
  at::Tensor y = batch_norm(conv2d(x, p[0], p[1], a), p + 2, fargs, a[16], train1).relu_();
  y = batch_norm(conv2d(y, p[7], p[8], a + 7), p + 9, fargs, a[16] + 2, train2);
  at::Tensor s = a[14] > 1 ? at::avg_pool2d(x, {a[14], a[14]}) : x;
  if (a[15] > 0) {
    s = at::constant_pad_nd(s, {0, 0, 0, 0, 0, a[15]}, 0);
  }
  return (y + s).relu_();
}

// Runs one node (a slot's chain of layers) on the rows of `pieces` (their concatenation).
// `p` points at the node's parameter block.
at::Tensor run_node(const Slot& slot, const at::Tensor* p, int64_t flags,
    at::ArrayRef<double> fargs, std::vector<at::Tensor> pieces) {
  size_t first = 0;
  // Leading flattens act on each piece (views); a linear layer then gathers without a copy.
  for (; first < slot.layers.size() && slot.layers[first].kind == layer::kFlatten; ++first) {
    for (at::Tensor& t : pieces) {
      t = t.flatten(slot.layers[first].args[0], slot.layers[first].args[1]);
    }
  }
  at::Tensor x;
  bool owned = false;  // x was produced here by a non-view op: relu may work in place
  if (pieces.size() > 1 && first < slot.layers.size() &&
      slot.layers[first].kind == layer::kLinear && blocked_linear_applies(pieces, p[0], p[1])) {
    x = blocked_linear(pieces, p[0], p[1]);
    p += 2;
    ++first;
    owned = true;
  } else {
    x = pieces.size() == 1 ? std::move(pieces[0]) : at::cat(pieces, 0);
  }
  for (size_t i = first; i < slot.layers.size(); ++i) {
    const LayerOp& op = slot.layers[i];
    const int64_t* a = op.args;
    bool train = op.stateful_bit >= 0 && ((flags >> op.stateful_bit) & 1);
    switch (op.kind) {
      case layer::kLinear:
        x = linear(x, p[0], p[1]);
        p += 2;
        owned = true;
        break;
      case layer::kConv2d:
        x = conv2d(x, p[0], p[1], a);
        p += 2;
        owned = true;
        break;
      case layer::kBasicBlock:
        x = basic_block(x, p, a, fargs, train,
            op.stateful_bit >= 0 && ((flags >> (op.stateful_bit + 1)) & 1));
        p += 14;
        owned = true;
        break;
      case layer::kGlobalAvgPool:
        x = a[0] != 0 ? at::adaptive_avg_pool2d(x, {1, 1}) : at::mean(x, {-2, -1});
        owned = true;
        break;
      case layer::kRelu:
        x = owned ? x.relu_() : at::relu(x);
        owned = true;
        break;
      case layer::kMaxPool2d:
        x = at::max_pool2d(x, {a[0], a[1]}, {a[2], a[3]}, {a[4], a[5]}, {a[6], a[7]}, a[8] != 0);
        owned = true;
        break;
      case layer::kFlatten:
        x = x.flatten(a[0], a[1]);
        owned = false;
        break;
      case layer::kBatchNorm:
        x = batch_norm(x, p, fargs, a[0], train);
        p += 5;
        owned = true;
        break;
      case layer::kDropout: {
        double prob = fargs[a[0]];
        if (train && prob > 0) {
          x = at::dropout(x, prob, true);
          owned = true;
        }
        break;
      }
      default:
        TORCH_CHECK(false, "l2bg.run_plan: unknown layer kind ", op.kind);
    }
  }
  return x;
}

}  // namespace

std::vector<at::Tensor> run_plan(at::IntArrayRef program, at::IntArrayRef layers,
    at::ArrayRef<double> fargs, at::IntArrayRef flags, at::TensorList inputs,
    const c10::List<std::optional<at::Tensor>>& params) {
  using namespace plan;
  TORCH_CHECK(program.size() >= kHeaderSize && program[kHMagic] == kMagic &&
          program[kHFormat] == kFormat,
      "l2bg.run_plan: not a plan of format ", kFormat, "; compile it with l2bg.plan");
  const bool per_task = program[kHPerTask] != 0;
  const int64_t n_tasks = program[kHTasks];
  const int64_t n_nodes = program[kHNodes];
  const int64_t n_buffers = program[kHBuffers];
  const int64_t n_inputs = per_task ? n_tasks : 1;
  TORCH_CHECK(static_cast<int64_t>(inputs.size()) == n_inputs, "l2bg.run_plan: the plan takes ",
      n_inputs, " inputs, got ", inputs.size());
  TORCH_CHECK(flags.empty() || static_cast<int64_t>(flags.size()) == n_nodes,
      "l2bg.run_plan: flags needs one entry per node (or none)");
  const std::vector<Slot> slots = decode_layers(layers, program[kHSlots]);

  std::vector<at::Tensor> p;
  p.reserve(params.size());
  for (const std::optional<at::Tensor>& t : params) {
    p.push_back(t.has_value() ? *t : at::Tensor());
  }
  const int64_t* node_info = program.data() + program[kHNodesAt];
  const int64_t* heads = program.data() + program[kHHeadsAt];
  for (int64_t k = 0; k < n_nodes; ++k) {
    int64_t need = 0;
    for (const LayerOp& op : slots[node_info[2 * k]].layers) {
      need += num_params(op.kind);
    }
    TORCH_CHECK(node_info[2 * k + 1] + need <= static_cast<int64_t>(p.size()),
        "l2bg.run_plan: params list too short for node ", k);
  }

  // Row blocks of every buffer: block_at[b] indexes (start, length) pairs in `blocks`.
  std::vector<int64_t> rows;
  if (per_task) {
    rows.reserve(n_tasks);
    for (const at::Tensor& x : inputs) {
      rows.push_back(x.size(0));
    }
  }
  std::vector<int64_t> block_at(n_buffers), block_count(n_buffers), blocks;
  const int64_t* lp = program.data() + program[kHLayoutsAt];
  for (int64_t b = 0; b < n_buffers; ++b) {
    int64_t n = *lp++;
    block_at[b] = static_cast<int64_t>(blocks.size()) / 2;
    block_count[b] = n;
    int64_t start = 0;
    for (int64_t j = 0; j < n; ++j) {
      int64_t len = per_task ? rows[lp[j]] : 0;
      blocks.push_back(start);
      blocks.push_back(len);
      start += len;
    }
    lp += n;
  }

  std::vector<at::Tensor> buffers(n_buffers);
  for (int64_t i = 0; i < n_inputs; ++i) {
    buffers[i] = inputs[i];
  }
  // Blocks [first, first + count) of a buffer; the whole buffer (no view) when that is all of it.
  auto view = [&](int64_t b, int64_t first, int64_t count) -> at::Tensor {
    const at::Tensor& buf = buffers[b];
    TORCH_CHECK(buf.defined(), "l2bg.run_plan: buffer ", b, " read after its release");
    if (count == 0 || block_count[b] == 0 || (first == 0 && count == block_count[b])) {
      return buf;
    }
    int64_t start = blocks[2 * (block_at[b] + first)];
    int64_t end = blocks[2 * (block_at[b] + first + count - 1)] +
        blocks[2 * (block_at[b] + first + count - 1) + 1];
    return buf.narrow(0, start, end - start);
  };

  std::vector<at::Tensor> outputs(program[kHOutputs]);
  const int64_t* sp = program.data() + program[kHStepsAt];
  const int64_t* end = program.data() + program.size();
  for (int64_t step = 0; step < program[kHSteps]; ++step) {
    TORCH_CHECK(sp < end, "l2bg.run_plan: program is truncated");
    switch (*sp) {
      case kEval: {
        int64_t node = sp[1], out = sp[2], nseg = sp[3];
        sp += 4;
        std::vector<at::Tensor> pieces;
        pieces.reserve(nseg);
        for (int64_t i = 0; i < nseg; ++i) {
          pieces.push_back(view(sp[3 * i], sp[3 * i + 1], sp[3 * i + 2]));
        }
        sp += 3 * nseg;
        buffers[out] = run_node(slots[node_info[2 * node]], p.data() + node_info[2 * node + 1],
            flags.empty() ? 0 : flags[node], fargs, std::move(pieces));
        break;
      }
      case kRelease:
        buffers[sp[1]].reset();
        sp += 2;
        break;
      case kCapture:
        outputs[sp[1]] = view(sp[2], sp[3], 1).flatten(1);
        sp += 4;
        break;
      case kHead: {
        int64_t offset = heads[sp[1]];
        outputs[sp[1]] = linear(view(sp[2], sp[3], 1), p[offset], p[offset + 1]);
        sp += 4;
        break;
      }
      case kOutput:
        outputs[sp[1]] = view(sp[2], sp[3], 1);
        sp += 4;
        break;
      default:
        TORCH_CHECK(false, "l2bg.run_plan: unknown step ", *sp);
    }
  }
  return outputs;
}

}  // namespace l2bg
