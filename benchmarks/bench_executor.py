"""forward_all: per-task loop vs reference plan vs native C++ executor (vs native + CUDA graph).

    pytest benchmarks/bench_executor.py                    reduced grid (about 3 min, 2 CPU cores)
    L2BG_BENCH_FULL=1 pytest benchmarks/bench_executor.py  T in {2, 5, 10, 20}, plus the convnet
    L2BG_BENCH_THREADS=1 ...                               torch.set_num_threads for the run

The network is the paper's permuted-MNIST MLP (784-300-300-300, shared 10-way head slot). Sharing:
``realistic`` (each task binds to a random earlier task and grows half its slots, δ≈0.5-like),
``all`` (every task bound to the first, nothing grown) and ``none`` (independent task-nets).
Inputs: ``shared`` (one batch for every task) or ``per-task`` (a batch per task). After the run a
table prints: mode, T, sharing, batch, backend, median, speedup over the loop, the FLOP bound
(FLOPs of the loop / FLOPs executed), speedup / bound, and the minimum with its speedup (on a
loaded machine long calls get preempted more often, which inflates the loop's median). Goals
(shared input, CPU): speedup >= 0.7 x bound at batch 64 and >= 0.9 x bound at batch 1024;
L2BG_BENCH_ASSERT=1 turns them into assertions.
"""

from __future__ import annotations

import os
import random
import time

import pytest
import torch
from torch import nn

from l2bg import executor as ex
from l2bg._ext import native_available
from l2bg.jointnet import JointNet
from l2bg.templates import convnet, mlp

FULL = os.environ.get("L2BG_BENCH_FULL") == "1"
if os.environ.get("L2BG_BENCH_THREADS"):
    torch.set_num_threads(int(os.environ["L2BG_BENCH_THREADS"]))
TASKS = (2, 5, 10, 20) if FULL else (5, 20)
SHARING = ("realistic", "all", "none")
BATCHES = (1, 64, 1024)
MODES = ("shared", "per-task")
DEVICES = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
TEMPLATES = ("mlp", "convnet") if FULL else ("mlp",)
GOALS = {64: 0.7, 1024: 0.9}
TARGET_S = 0.4  # measured time per case (rounds adapt to it)

_ROWS: dict[tuple, dict] = {}


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
        if sharing == "realistic":
            net.grow(f"t{i}", rng.sample(expandable, len(expandable) // 2))
    return net.eval()


def slot_flops(net: JointNet) -> tuple[list[int], int]:
    """FLOPs per sample of each slot (2 per multiply-add of linear and conv) and of a head."""
    x = torch.zeros(1, *ex.feature_shape(net))
    route = next(iter(net.routes().values()))
    per_slot = []
    with torch.no_grad():
        for node in route:
            flops = 0
            for layer in net.nodes[node]:
                y = layer(x)
                if isinstance(layer, nn.Linear):
                    flops += 2 * layer.in_features * layer.out_features
                elif isinstance(layer, nn.Conv2d):
                    k = layer.kernel_size[0] * layer.kernel_size[1]
                    flops += 2 * y[0].numel() * layer.in_channels * k // layer.groups
                x = y
            per_slot.append(flops)
    head = 2 * net.template.head_in * 10 if net.template.per_task_heads else 0
    return per_slot, head


def flop_bound(net: JointNet, mode: str) -> float:
    """FLOPs of the per-task loop / FLOPs of the plan (rows are the same for every task)."""
    per_slot, head = slot_flops(net)
    plan = ex.get_plan(net, per_task=mode == "per-task")
    n = len(net.tasks)
    loop = n * (sum(per_slot) + head)
    done = n * head + sum(
        per_slot[s]
        for step in plan.steps
        if step[0] == ex.EVAL
        for s in [net.node_slot(plan.node_ids[step[1]])]
    )
    if mode == "per-task":  # every node runs on the rows of each of its tasks: same FLOPs
        return 1.0
    return loop / done


def backends(device: str) -> list[str]:
    names = ["loop", "reference"]
    if native_available():
        names.append("native")
        if device == "cuda":
            names.append("native+graph")
    return names


def cases():
    for template in TEMPLATES:
        for mode in MODES:
            for n_tasks in TASKS:
                for sharing in SHARING:
                    for batch in BATCHES:
                        if template == "convnet" and batch > 64:
                            continue
                        for device in DEVICES:
                            for backend in ("loop", "reference", "native", "native+graph"):
                                yield pytest.param(
                                    template,
                                    mode,
                                    n_tasks,
                                    sharing,
                                    batch,
                                    device,
                                    backend,
                                    id=f"{template}-{mode}-T{n_tasks}-{sharing}-b{batch}-{device}"
                                    f"-{backend}",
                                )


@pytest.fixture(scope="module", autouse=True)
def report(request):
    """Print the table of every case once the module's benchmarks ran."""
    yield
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if capture is not None:
        with capture.global_and_fixture_disabled():
            _print_table(print)
    else:
        _print_table(print)


def _print_table(write) -> None:
    header = (
        f"{'tpl':8} {'mode':8} {'dev':4} {'T':>3} {'sharing':9} {'batch':>5} "
        f"{'backend':13} {'median':>11} {'speedup':>8} {'bound':>6} {'sp/bound':>8} "
        f"{'min':>11} {'sp(min)':>8}"
    )
    write("")
    write(f"forward_all benchmark (torch threads: {torch.get_num_threads()})")
    write(header)
    misses = []
    for key, row in _ROWS.items():
        template, mode, n_tasks, sharing, batch, device, backend = key
        loop = _ROWS.get((*key[:-1], "loop"))
        speedup = loop["median"] / row["median"] if loop else float("nan")
        speedup_min = loop["min"] / row["min"] if loop else float("nan")
        ratio = speedup / row["bound"]
        write(
            f"{template:8} {mode:8} {device:4} {n_tasks:>3} {sharing:9} {batch:>5} "
            f"{backend:13} {row['median'] * 1e3:>9.3f}ms {speedup:>7.2f}x "
            f"{row['bound']:>6.2f} {ratio:>8.2f} {row['min'] * 1e3:>9.3f}ms {speedup_min:>7.2f}x"
        )
        goal = GOALS.get(batch)
        if goal and mode == "shared" and device == "cpu" and backend == "native" and ratio < goal:
            misses.append(f"{key}: speedup/bound {ratio:.2f} < {goal}")
    for miss in misses:
        write(f"GOAL MISSED {miss}")
    if misses and os.environ.get("L2BG_BENCH_ASSERT") == "1":
        pytest.fail("; ".join(misses))


_NETS: dict[tuple, JointNet] = {}


@pytest.mark.parametrize("template,mode,n_tasks,sharing,batch,device,backend", list(cases()))
def test_forward_all(benchmark, template, mode, n_tasks, sharing, batch, device, backend):
    if backend not in backends(device):
        pytest.skip(f"{backend} is not available on {device}")
    key = (template, n_tasks, sharing, device)
    if key not in _NETS:
        _NETS.clear()
        _NETS[key] = build(template, n_tasks, sharing).to(device)
    net = _NETS[key]
    gen = torch.Generator().manual_seed(1)
    shape = ex.feature_shape(net)
    if mode == "shared":
        x = torch.randn(batch, *shape, generator=gen).to(device)
    else:
        x = {t: torch.randn(batch, *shape, generator=gen).to(device) for t in net.tasks}
    graph = backend == "native+graph"
    name = "native" if graph else backend
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)

    def run():
        out = net.forward_all(x, backend=name, cuda_graph=graph)
        sync()
        return out

    with torch.inference_mode():
        start = time.perf_counter()
        run()
        once = time.perf_counter() - start
        rounds = max(3, min(200, int(TARGET_S / max(once, 1e-6))))
        benchmark.pedantic(run, rounds=rounds, warmup_rounds=1, iterations=1)
    bound = flop_bound(net, mode)
    benchmark.extra_info.update(
        mode=mode, tasks=n_tasks, sharing=sharing, batch=batch, backend=backend, flop_bound=bound
    )
    _ROWS[(template, mode, n_tasks, sharing, batch, device, backend)] = {
        "median": benchmark.stats.stats.median if benchmark.stats else once,  # once: disabled
        "min": benchmark.stats.stats.min if benchmark.stats else once,
        "bound": bound,
    }


if __name__ == "__main__":
    raise SystemExit(pytest.main([__file__, "-q", "-p", "no:cacheprovider"]))
