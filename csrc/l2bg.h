// Shared declarations of the l2bg._C extension: the plan format written by the router
// (plan.cpp) and read by the executor (executor.cpp).
//
// A plan is a flat int64 program, so it can travel through a TORCH_LIBRARY schema as `int[]`.
// l2bg/net/plan.py holds a pure-Python copy of the router that must produce the identical
// program (tests compare them element by element): change both together and bump kFormat.
//
//   header   kHeaderSize ints (see Header)
//   nodes    per node k: slot, offset of its first parameter in the params list
//   heads    per task t: offset of its head's weight in the params list, or -1 (no head)
//   layouts  per buffer b: number of row blocks, then the task of each block in row order
//            (0 blocks: the buffer holds the whole shared batch)
//   steps    kEval node out nseg (buffer first_block num_blocks)*nseg  (num_blocks 0: whole)
//            kRelease buffer
//            kCapture output buffer block     activation of one task at one slot
//            kHead task buffer block          logits through the task's own head
//            kOutput task buffer block        logits are the buffer itself (shared head slot)
//
// Buffers 0..n_inputs-1 are the inputs (one shared input, or one per task in task order).
// Outputs: logits of task t at index t, then for the r-th captured task (ascending task index)
// its activation at slot s at index n_tasks + r * n_slots + s.
#pragma once

#include <cstdint>
#include <vector>

namespace l2bg {
namespace plan {

constexpr int64_t kMagic = 0x6C326267;  // "l2bg"
constexpr int64_t kFormat = 1;

enum Header : int64_t {
  kHMagic = 0,
  kHFormat,
  kHPerTask,
  kHTasks,
  kHSlots,
  kHNodes,
  kHBuffers,
  kHOutputs,
  kHEvals,
  kHPeakLive,
  kHSteps,
  kHNodesAt,
  kHHeadsAt,
  kHLayoutsAt,
  kHStepsAt,
  kHeaderSize
};

enum Op : int64_t { kEval = 1, kRelease = 2, kCapture = 3, kHead = 4, kOutput = 5 };

}  // namespace plan

// Layer kinds of a slot program (the `layers` list the executor receives). Per layer: kind,
// then its integer arguments; parameters are taken in order from the node's parameter block.
//   kLinear     -                                  params: weight, bias?
//   kConv2d     sh sw ph pw dh dw groups           params: weight, bias?
//   kRelu       -
//   kMaxPool2d  kh kw sh sw ph pw dh dw ceil_mode
//   kFlatten    start_dim end_dim
//   kBatchNorm  fargs index (eps, momentum; momentum < 0 means cumulative average)
//                                                  params: weight? bias? running_mean?
//                                                          running_var? num_batches_tracked?
//   kDropout    fargs index (p)
//   kBasicBlock conv1 (sh sw ph pw dh dw groups) conv2 (sh sw ph pw dh dw groups)
//               pool extra bn                    params: conv1 weight, bias?, bn1 (5 entries),
//                                                        conv2 weight, bias?, bn2 (5 entries)
//               relu(bn1(conv1 x)) -> bn2(conv2 .) -> relu(. + shortcut x), the shortcut being
//               avg_pool2d(x, pool) when pool > 1, then `extra` zero channels appended
//               (l2bg/net/blocks.py); bn: fargs index of bn1's (eps, momentum), bn2's follow
//   kGlobalAvgPool keepdim                       mean over H, W: (N, C) (0) or
//                                                adaptive_avg_pool2d to (N, C, 1, 1) (1)
// kBatchNorm and kDropout are stateful: bit j of flags[node] is the training flag of the j-th
// stateful layer of the node's slot; a kBasicBlock takes two bits (bn1, then bn2).
namespace layer {
enum Kind : int64_t {
  kLinear = 0,
  kConv2d,
  kRelu,
  kMaxPool2d,
  kFlatten,
  kBatchNorm,
  kDropout,
  kBasicBlock,
  kGlobalAvgPool,
  kNumKinds
};
}  // namespace layer

// Router: routes is n_tasks x num_slots node indices (row-major, nodes numbered densely from 0);
// slot_params[s] is the number of parameter entries of a node at slot s; head_params the number
// per task head (0: the last slot is a shared head); capture the ascending task indices whose
// per-slot activations are returned. Throws std::invalid_argument on malformed input.
std::vector<int64_t> compile_plan(
    const std::vector<int64_t>& routes,
    int64_t num_slots,
    const std::vector<int64_t>& slot_params,
    int64_t head_params,
    bool per_task,
    const std::vector<int64_t>& capture);

}  // namespace l2bg
