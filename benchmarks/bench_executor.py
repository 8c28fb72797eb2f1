"""forward_all: per-task loop vs reference plan vs native C++ executor (vs native + CUDA graph).

    pytest benchmarks/bench_executor.py                    reduced grid (2 CPU cores: ~2 min)
    L2BG_BENCH_FULL=1 pytest benchmarks/bench_executor.py  T in {2, 5, 10, 20}, plus the convnet
    L2BG_BENCH_THREADS=1 ...                               torch.set_num_threads for the run

The network is the paper's permuted-MNIST MLP (784-300-300-300, shared 10-way head slot). Sharing:
``realistic`` (each task binds to a random earlier task and grows half its slots, δ≈0.5-like),
``groups`` and ``adapt`` (the same binds, growing 2 of 4 channel groups of those slots, or
adapters on them: virtual nodes, docs/design.md §2.9.1), ``all`` (every task bound to the first,
nothing grown) and ``none`` (independent task-nets).
Inputs: ``shared`` (one batch for every task) or ``per-task`` (a batch per task). Each row notes
the speedup over the loop (median and min: on a loaded machine long calls get preempted more
often, which inflates the loop's median), the FLOP bound (FLOPs of the loop / FLOPs of the plan,
both counted by torch's FlopCounterMode) and speedup / bound. A calibration GEMM of the first
layer at each batch size sits beside them. Goals: shared input on the CPU, speedup >= 0.7 x
bound at batch 64 and >= 0.9 x bound at batch 1024; per-task input on CUDA, >= 2x the loop at
batch <= 64. Misses are noted in the row (``goal_missed``); L2BG_BENCH_ASSERT=1 fails them.

Residual nets: a grown resnet26 JointNet (T = 10, b = 64, shared input, CPU; widths x 0.25, the
residual-adapters code's ``factor``, unless L2BG_BENCH_FULL=1) timed alternately with the loop,
best of 5, against its dedup bound (goal 0.7), and the same net as a user module template whose
blocks are a class C++ does not know: the cost of the plan's PyTorch path.
"""

from __future__ import annotations

import os
import random
import time
from typing import Any

import pytest
import torch
from harness import FULL, Timing, calibrate_gemm, measure, record
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from l2bg.base.native import native_available
from l2bg.net.blocks import BasicBlock
from l2bg.net.jointnet import JointNet
from l2bg.net.modules import module_template
from l2bg.net.resnets import resnet26
from l2bg.net.templates import convnet, mlp

SUITE = "executor"
if os.environ.get("L2BG_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["L2BG_BENCH_THREADS"]))
CUDA = torch.cuda.is_available()
TASKS = (2, 5, 10, 20) if FULL else (5, 20)
SHARING = ("realistic", "groups", "adapt", "all", "none")
BATCHES = (1, 64, 1024)
MODES = ("shared", "per-task")
TEMPLATES = ("mlp", "convnet") if FULL else ("mlp",)
BACKENDS = ("loop", "reference", "native", "native+graph")
SHARED_GOALS = {64: 0.7, 1024: 0.9}  # CPU, shared input: speedup / FLOP bound
PER_TASK_GOAL = 2.0  # CUDA, per-task input, batch <= 64: speedup over the loop
TARGET_S = 0.3  # measured time per case (rounds adapt to it)
INPUT_SHAPE = {"mlp": (784,), "convnet": (3, 32, 32)}

_LOOP: dict[tuple, tuple[float, float]] = {}
_BOUND: dict[tuple, float] = {}  # loop_key -> FLOPs of the loop / of the plan
_NETS: dict[tuple, JointNet] = {}


def build(template: str, n_tasks: int, sharing: str, seed: int = 0) -> JointNet:
    """A JointNet of ``n_tasks`` task-nets with the given sharing pattern (fixed seed)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    tpl = (
        mlp(784, (300, 300, 300), 10, shared_head=True)
        if template == "mlp"
        else convnet(in_channels=3, image_size=32)
    )
    net = JointNet(tpl)
    classes = None if template == "mlp" else 10
    net.add_task("t0", classes)
    expandable = tpl.expandable_slots
    for i in range(1, n_tasks):
        if sharing == "none":
            net.add_task(f"t{i}", classes)
            continue
        net.bind(
            f"t{i}", to="t0" if sharing == "all" else f"t{rng.randrange(i)}", num_classes=classes
        )
        slots = rng.sample(expandable, len(expandable) // 2)
        if sharing == "realistic":
            net.grow(f"t{i}", slots)
        elif sharing == "groups":
            net.grow(f"t{i}", groups={s: rng.sample(range(4), 2) for s in slots}, num_groups=4)
        elif sharing == "adapt":
            net.grow(f"t{i}", slots, mode="adapt")
    return net.eval()


def flops(net: JointNet, x, backend: str) -> int:
    """FLOPs of one forward_all call (matmuls and convolutions)."""
    with torch.inference_mode(), FlopCounterMode(display=False) as counter:
        net.forward_all(x, backend=backend)
    return counter.get_total_flops()


def backend_available(backend: str, device: str) -> bool:
    if backend in ("native", "native+graph") and not native_available():
        return False
    return backend != "native+graph" or device == "cuda"


def cases():
    devices = ("cpu", "cuda") if CUDA else ("cpu",)
    for template in TEMPLATES:
        for mode in MODES:
            for n_tasks in TASKS:
                for sharing in SHARING:
                    for batch in BATCHES:
                        if template == "convnet" and batch > 64:
                            continue
                        for device in devices:
                            for backend in BACKENDS:
                                if backend == "native+graph" and device != "cuda":
                                    continue
                                marks = [pytest.mark.cuda] if device == "cuda" else []
                                yield pytest.param(
                                    template, mode, n_tasks, sharing, batch, device, backend,
                                    marks=marks,
                                    id=f"{template}-{mode}-T{n_tasks}-{sharing}-b{batch}-{device}"
                                    f"-{backend}",
                                )  # fmt: skip


@pytest.mark.parametrize("batch", BATCHES)
def test_gemm_calibration(benchmark, batch):
    """The first MLP layer as a plain GEMM at each batch size (the executor's largest op)."""
    calibrate_gemm(SUITE, batch, 784, 300, rounds=20, benchmark=benchmark, label="mlp fc1")


@pytest.mark.parametrize("template,mode,n_tasks,sharing,batch,device,backend", list(cases()))
def test_forward_all(benchmark, template, mode, n_tasks, sharing, batch, device, backend):
    if not backend_available(backend, device):
        pytest.skip(f"{backend} is not available on {device}")
    key = (template, n_tasks, sharing, device)
    if key not in _NETS:
        _NETS.clear()
        _NETS[key] = build(template, n_tasks, sharing).to(device)
    net = _NETS[key]
    gen = torch.Generator().manual_seed(1)
    shape = INPUT_SHAPE[template]
    if mode == "shared":
        x = torch.randn(batch, *shape, generator=gen).to(device)
    else:
        x = {t: torch.randn(batch, *shape, generator=gen).to(device) for t in net.tasks}
    graph = backend == "native+graph"
    name = "native" if graph else backend
    with torch.inference_mode():
        fn = lambda: net.forward_all(x, backend=name, cuda_graph=graph)
        start = time.perf_counter()
        fn()
        once = time.perf_counter() - start
        rounds = max(3, min(200, int(TARGET_S / max(once, 1e-6))))
        t = measure(fn, rounds=rounds, warmup=1, device=device, benchmark=benchmark)
    loop_key = (template, mode, n_tasks, sharing, batch, device)
    if backend == "loop":
        _LOOP[loop_key] = (t.median, min(t.times))
    if loop_key not in _BOUND:  # two counted forward passes, the same for every backend row
        _BOUND[loop_key] = (1.0 if mode == "per-task"
                            else flops(net, x, "loop") / flops(net, x, "reference"))
    bound = _BOUND[loop_key]
    notes = {"mode": mode, "flop_bound": round(bound, 2)}
    if loop_key in _LOOP and backend != "loop":
        speedup = _LOOP[loop_key][0] / t.median
        notes.update(speedup=round(speedup, 2), sp_per_bound=round(speedup / bound, 2),
                     speedup_min=round(_LOOP[loop_key][1] / min(t.times), 2))  # fmt: skip
        goal = _goal(mode, batch, device, backend)
        if goal is not None:
            ratio = speedup / bound if mode == "shared" else speedup
            notes["goal"] = goal
            if ratio < goal:
                notes["goal_missed"] = True
                if os.environ.get("L2BG_BENCH_ASSERT") == "1":
                    pytest.fail(f"{loop_key} {backend}: {ratio:.2f} < goal {goal}")
    record(suite=SUITE, op="forward_all", backend=backend, device=device,
           shape=f"{template} T={n_tasks} {sharing} b={batch}", dtype="float32", timing=t,
           items=batch * n_tasks, unit="task-rows/s", **notes)  # fmt: skip


def _goal(mode: str, batch: int, device: str, backend: str) -> float | None:
    if mode == "shared" and device == "cpu" and backend == "native":
        return SHARED_GOALS.get(batch)
    if mode == "per-task" and device == "cuda" and backend.startswith("native") and batch <= 64:
        return PER_TASK_GOAL
    return None


# ------------------------------------------------------------------------------ residual nets
RESNET_TASKS, RESNET_BATCH = 10, 64
RESNET_FACTOR = 1.0 if FULL else 0.25  # the residual-adapters code's width factor
RESNET_ROUNDS = 5


class UserBlock(BasicBlock):
    """A user's own residual block class (the same layers): C++ does not know it, so a user
    template of it runs its blocks through the PyTorch path of the plan."""


def _resnet_template():
    f = RESNET_FACTOR
    return resnet26(stem=int(32 * f), widths=(int(64 * f), int(128 * f), int(256 * f)))


def _user_resnet_template(tpl):
    slots = {}
    for spec in tpl.slots:
        mods = [UserBlock(a.args["in_channels"], a.args["out_channels"], a.args["stride"])
                if a.kind == "basic_block" else a.build() for a in spec.layers]
        slots[spec.name] = nn.Sequential(*mods)
    width = tpl.head_in
    return module_template(slots, name="user-resnet26", input_shape=tpl.input_shape,
                           expandable=tpl.expandable_slots, head=lambda c: nn.Linear(width, c))


def _grow_like(net: JointNet, n_tasks: int, sharing: str, seed: int = 0) -> JointNet:
    """``realistic``: each task binds to a random earlier task and grows half the slots;
    ``all``: every task bound to the first, nothing grown (heads apart)."""
    torch.manual_seed(seed)
    rng = random.Random(seed)
    net.add_task("t0", 10)
    expandable = net.template.expandable_slots
    for i in range(1, n_tasks):
        net.bind(f"t{i}", to="t0" if sharing == "all" else f"t{rng.randrange(i)}",
                 num_classes=10)
        if sharing == "realistic":
            net.grow(f"t{i}", rng.sample(expandable, len(expandable) // 2))
    return net.eval()


def _alternate(fns: dict[str, Any], rounds: int) -> dict[str, list[float]]:
    """Time the functions alternately (one call each per round) so that load changes hit all
    of them alike; a warm-up call first."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - start)
    return times


@pytest.mark.skipif(not native_available(), reason="needs the C++ extension")
@pytest.mark.parametrize("sharing", ["realistic", "all"])
def test_forward_all_resnet_and_user_module_path(sharing):
    """A grown resnet26 JointNet (T = 10, b = 64, shared input, CPU): the native executor's
    speedup over the loop against its dedup bound (FLOPs of the loop / of the plan), goal
    >= 0.7; and the same net as a user module template (its blocks a class C++ does not know):
    the cost of the PyTorch path, native(user) / native(built-in)."""
    tpl = _resnet_template()
    net = _grow_like(JointNet(tpl), RESNET_TASKS, sharing)
    user = _grow_like(JointNet(_user_resnet_template(tpl)), RESNET_TASKS, sharing)
    user.load_state_dict(net.state_dict())
    x = torch.randn(RESNET_BATCH, *tpl.input_shape, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        bound = flops(net, x, "loop") / flops(net, x, "reference")
        want = net.forward_all(x, backend="native")
        got = user.forward_all(x, backend="native")
        assert all(torch.allclose(got[t], want[t], atol=1e-4) for t in want)
        fns = {"loop": lambda: net.forward_all(x, backend="loop"),
               "reference": lambda: net.forward_all(x, backend="reference"),
               "native": lambda: net.forward_all(x, backend="native"),
               "user-native": lambda: user.forward_all(x, backend="native")}
        times = _alternate(fns, RESNET_ROUNDS)
    best = {k: min(v) for k, v in times.items()}
    load = os.getloadavg()
    shape = f"resnet26x{RESNET_FACTOR} T={RESNET_TASKS} {sharing} b={RESNET_BATCH}"
    for k in fns:
        notes: dict[str, Any] = {"mode": "shared", "flop_bound": round(bound, 2),
                                 "load": [round(v, 2) for v in load]}
        if k != "loop":
            speedup = best["loop"] / best[k]
            notes.update(speedup_min=round(speedup, 2), sp_per_bound=round(speedup / bound, 2))
        if k == "native":
            notes["goal"] = SHARED_GOALS[64]
            if speedup / bound < SHARED_GOALS[64]:
                notes["goal_missed"] = True
        if k == "user-native":
            notes["pytorch_path_cost"] = round(best[k] / best["native"], 2)
        record(suite=SUITE, op="forward_all", backend=k, device="cpu", shape=shape,
               dtype="float32", timing=Timing(times[k]), items=RESNET_BATCH * RESNET_TASKS,
               unit="task-rows/s", **notes)
    print(f"\n{shape}: best of {RESNET_ROUNDS} (s) " + ", ".join(
        f"{k} {v:.3f}" for k, v in best.items())
        + f"; native speedup {best['loop'] / best['native']:.2f} x, dedup bound {bound:.2f} x, "
          f"ratio {best['loop'] / best['native'] / bound:.2f} (goal 0.7); user-module PyTorch "
          f"path / native {best['user-native'] / best['native']:.2f}; load {load}")
