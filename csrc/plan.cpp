// Router: compiles the routes of a set of tasks through a JointNet into a flat program (format in
// l2bg.h). Plain C++ with no torch headers, so it builds in a second.
//
// Shared input: the routes form a prefix tree; a tree node (a node reached by one upstream path)
// is evaluated once for every task below it. The tree is walked depth first, evaluating all
// children of a tree node before descending, so a buffer is released right after its last
// consumer and at most one level of siblings per depth is alive.
//
// Per-task inputs: slot by slot, every node in use runs once on the rows of all tasks routed
// through it. A node's output rows are ordered by the tasks' remaining route, then by where their
// rows are now (upstream buffer, block): the rows the next node needs from it are one contiguous
// block, the rows it gathers from one upstream buffer too, and when every task of a node comes
// from one upstream node its input is that buffer as it is (no copy).

#include <algorithm>
#include <stdexcept>
#include <string>
#include <utility>

#include "l2bg.h"

namespace l2bg {

namespace {

using plan::kCapture;
using plan::kEval;
using plan::kHead;
using plan::kOutput;
using plan::kRelease;

struct Segment {
  int64_t buffer;
  int64_t first;
  int64_t count;
};

class Router {
 public:
  Router(
      const std::vector<int64_t>& routes,
      int64_t num_slots,
      const std::vector<int64_t>& slot_params,
      int64_t head_params,
      bool per_task,
      const std::vector<int64_t>& capture)
      : routes_(routes),
        slots_(num_slots),
        slot_params_(slot_params),
        head_params_(head_params),
        per_task_(per_task) {
    validate(capture);
  }

  std::vector<int64_t> compile() {
    if (per_task_) {
      compile_per_task();
    } else {
      compile_shared();
    }
    return assemble();
  }

 private:
  [[noreturn]] static void fail(const std::string& what) {
    throw std::invalid_argument("l2bg plan: " + what);
  }

  void validate(const std::vector<int64_t>& capture) {
    if (slots_ < 1) {
      fail("num_slots must be >= 1");
    }
    if (routes_.empty() || routes_.size() % slots_ != 0) {
      fail("routes must hold n_tasks x num_slots node indices, n_tasks >= 1");
    }
    if (static_cast<int64_t>(slot_params_.size()) != slots_) {
      fail("slot_params needs one entry per slot");
    }
    if (head_params_ < 0) {
      fail("head_params must be >= 0");
    }
    tasks_ = static_cast<int64_t>(routes_.size()) / slots_;
    int64_t max_node = -1;
    for (int64_t v : routes_) {
      if (v < 0) {
        fail("node indices must be >= 0");
      }
      max_node = std::max(max_node, v);
    }
    nodes_ = max_node + 1;
    node_slot_.assign(nodes_, -1);
    for (int64_t t = 0; t < tasks_; ++t) {
      for (int64_t s = 0; s < slots_; ++s) {
        int64_t& slot = node_slot_[route(t, s)];
        if (slot != -1 && slot != s) {
          fail("node " + std::to_string(route(t, s)) + " appears at two slots");
        }
        slot = s;
      }
    }
    for (int64_t k = 0; k < nodes_; ++k) {
      if (node_slot_[k] == -1) {
        fail("node indices must be dense (node " + std::to_string(k) + " is unused)");
      }
    }
    capture_rank_.assign(tasks_, -1);
    int64_t prev = -1;
    for (size_t r = 0; r < capture.size(); ++r) {
      if (capture[r] <= prev || capture[r] >= tasks_) {
        fail("capture must list ascending task indices below n_tasks");
      }
      capture_rank_[capture[r]] = static_cast<int64_t>(r);
      prev = capture[r];
    }
    num_captured_ = static_cast<int64_t>(capture.size());
  }

  int64_t route(int64_t t, int64_t s) const { return routes_[t * slots_ + s]; }

  int64_t new_buffer(std::vector<int64_t> layout) {
    layouts_.push_back(std::move(layout));
    peak_ = std::max(peak_, ++live_);
    return static_cast<int64_t>(layouts_.size()) - 1;
  }

  void emit(std::initializer_list<int64_t> op) {
    steps_.insert(steps_.end(), op);
    ++num_steps_;
  }

  void release(int64_t buffer) {
    emit({kRelease, buffer});
    --live_;
  }

  void eval(int64_t node, int64_t out, const std::vector<Segment>& segments) {
    steps_.insert(
        steps_.end(), {kEval, node, out, static_cast<int64_t>(segments.size())});
    for (const Segment& seg : segments) {
      steps_.insert(steps_.end(), {seg.buffer, seg.first, seg.count});
    }
    ++num_steps_;
    ++evals_;
  }

  // Captures of one slot, then the logits when it is the last slot, for tasks[j] at block j
  // (block 0 throughout for a shared input).
  void emit_outputs(int64_t s, int64_t out, const std::vector<int64_t>& tasks) {
    for (size_t j = 0; j < tasks.size(); ++j) {
      int64_t t = tasks[j];
      if (capture_rank_[t] >= 0) {
        emit({kCapture, tasks_ + capture_rank_[t] * slots_ + s, out, block(j)});
      }
    }
    if (s == slots_ - 1) {
      for (size_t j = 0; j < tasks.size(); ++j) {
        emit({head_params_ > 0 ? kHead : kOutput, tasks[j], out, block(j)});
      }
    }
  }

  int64_t block(size_t j) const { return per_task_ ? static_cast<int64_t>(j) : 0; }

  // Groups tasks by their node at slot s, in order of first appearance.
  std::vector<std::pair<int64_t, std::vector<int64_t>>> group(
      const std::vector<int64_t>& tasks, int64_t s) const {
    std::vector<std::pair<int64_t, std::vector<int64_t>>> groups;
    for (int64_t t : tasks) {
      int64_t node = route(t, s);
      auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) {
        return g.first == node;
      });
      if (it == groups.end()) {
        groups.push_back({node, {t}});
      } else {
        it->second.push_back(t);
      }
    }
    return groups;
  }

  void compile_shared() {
    std::vector<int64_t> all(tasks_);
    for (int64_t t = 0; t < tasks_; ++t) {
      all[t] = t;
    }
    int64_t input = new_buffer({});
    visit(input, 0, all);
  }

  void visit(int64_t buffer, int64_t s, const std::vector<int64_t>& tasks) {
    auto children = group(tasks, s);
    std::vector<int64_t> outs;
    for (const auto& [node, sub] : children) {
      int64_t out = new_buffer({});
      eval(node, out, {{buffer, 0, 0}});
      emit_outputs(s, out, sub);
      if (s == slots_ - 1) {
        release(out);
      }
      outs.push_back(out);
    }
    release(buffer);
    if (s < slots_ - 1) {
      for (size_t i = 0; i < children.size(); ++i) {
        visit(outs[i], s + 1, children[i].second);
      }
    }
  }

  void compile_per_task() {
    std::vector<int64_t> cur_buf(tasks_), cur_blk(tasks_, 0), all(tasks_);
    for (int64_t t = 0; t < tasks_; ++t) {
      cur_buf[t] = new_buffer({t});
      all[t] = t;
    }
    for (int64_t s = 0; s < slots_; ++s) {
      auto groups = group(all, s);
      std::vector<int64_t> last_use(layouts_.size(), -1);
      for (size_t i = 0; i < groups.size(); ++i) {
        for (int64_t t : groups[i].second) {
          last_use[cur_buf[t]] = static_cast<int64_t>(i);
        }
      }
      std::vector<int64_t> next_buf(tasks_), next_blk(tasks_);
      for (size_t i = 0; i < groups.size(); ++i) {
        auto& [node, members] = groups[i];
        std::stable_sort(members.begin(), members.end(), [&](int64_t a, int64_t b) {
          for (int64_t r = s + 1; r < slots_; ++r) {
            if (route(a, r) != route(b, r)) {
              return route(a, r) < route(b, r);
            }
          }
          // Then by where the rows are now, so rows from one upstream buffer stay in one block.
          if (cur_buf[a] != cur_buf[b]) {
            return cur_buf[a] < cur_buf[b];
          }
          return cur_blk[a] < cur_blk[b];
        });
        int64_t out = new_buffer(members);
        std::vector<Segment> segments;
        for (int64_t t : members) {
          if (!segments.empty() && segments.back().buffer == cur_buf[t] &&
              segments.back().first + segments.back().count == cur_blk[t]) {
            ++segments.back().count;
          } else {
            segments.push_back({cur_buf[t], cur_blk[t], 1});
          }
        }
        eval(node, out, segments);
        for (size_t j = 0; j < members.size(); ++j) {
          next_buf[members[j]] = out;
          next_blk[members[j]] = static_cast<int64_t>(j);
        }
        emit_outputs(s, out, members);
        for (size_t b = 0; b < last_use.size(); ++b) {
          if (last_use[b] == static_cast<int64_t>(i)) {
            release(static_cast<int64_t>(b));
          }
        }
        if (s == slots_ - 1) {
          release(out);
        }
      }
      cur_buf.swap(next_buf);
      cur_blk.swap(next_blk);
    }
  }

  std::vector<int64_t> assemble() const {
    using namespace plan;
    std::vector<int64_t> out(kHeaderSize, 0);
    out[kHMagic] = kMagic;
    out[kHFormat] = kFormat;
    out[kHPerTask] = per_task_ ? 1 : 0;
    out[kHTasks] = tasks_;
    out[kHSlots] = slots_;
    out[kHNodes] = nodes_;
    out[kHBuffers] = static_cast<int64_t>(layouts_.size());
    out[kHOutputs] = tasks_ + num_captured_ * slots_;
    out[kHEvals] = evals_;
    out[kHPeakLive] = peak_;
    out[kHSteps] = num_steps_;
    out[kHNodesAt] = static_cast<int64_t>(out.size());
    int64_t offset = 0;
    for (int64_t k = 0; k < nodes_; ++k) {
      out.push_back(node_slot_[k]);
      out.push_back(offset);
      offset += slot_params_[node_slot_[k]];
    }
    out[kHHeadsAt] = static_cast<int64_t>(out.size());
    for (int64_t t = 0; t < tasks_; ++t) {
      out.push_back(head_params_ > 0 ? offset + t * head_params_ : -1);
    }
    out[kHLayoutsAt] = static_cast<int64_t>(out.size());
    for (const auto& layout : layouts_) {
      out.push_back(static_cast<int64_t>(layout.size()));
      out.insert(out.end(), layout.begin(), layout.end());
    }
    out[kHStepsAt] = static_cast<int64_t>(out.size());
    out.insert(out.end(), steps_.begin(), steps_.end());
    return out;
  }

  const std::vector<int64_t>& routes_;
  int64_t slots_;
  const std::vector<int64_t>& slot_params_;
  int64_t head_params_;
  bool per_task_;
  int64_t tasks_ = 0;
  int64_t nodes_ = 0;
  int64_t num_captured_ = 0;
  std::vector<int64_t> node_slot_;
  std::vector<int64_t> capture_rank_;
  std::vector<std::vector<int64_t>> layouts_;
  std::vector<int64_t> steps_;
  int64_t live_ = 0;
  int64_t peak_ = 0;
  int64_t evals_ = 0;
  int64_t num_steps_ = 0;
};

}  // namespace

std::vector<int64_t> compile_plan(
    const std::vector<int64_t>& routes,
    int64_t num_slots,
    const std::vector<int64_t>& slot_params,
    int64_t head_params,
    bool per_task,
    const std::vector<int64_t>& capture) {
  return Router(routes, num_slots, slot_params, head_params, per_task, capture).compile();
}

}  // namespace l2bg
