"""Whole-trial benchmark: one full grow sequence (L2BG, δ = 0.5 for every task), timed by phase.

    pytest benchmarks/bench_trial.py                      CPU: reduced sizes (~30 s on 2 cores)
    L2BG_BENCH_FULL=1 pytest benchmarks/bench_trial.py    CPU: full sizes too (hours on 2 cores)

Two task streams of synthetic class-conditional data (this measures time, not accuracy; no
download): split-CIFAR-100-shaped (10 tasks of 10 classes of 3 x 32 x 32 images, 4500 training,
500 validation and 1000 test images per task) on the convnet template, and permuted-MNIST-shaped
(5 tasks of 784 permuted pixels, MNIST's 54000/6000/10000 split) on the MLP. CUDA runs them at
full size, the CPU at a reduced size (``SIZES``) unless L2BG_BENCH_FULL=1.

Rows: the whole trial (wall time; goal on CUDA for split-CIFAR-100: <= 60 s, the paper reports
about 11 minutes), then each phase of ``record["timings"]`` (independent nets, activations, RSA,
training in the JointNet, evaluation). The two training phases report their achieved FLOP/s:
forward + backward FLOPs of one task-net per sample (counted by torch's FlopCounterMode, about
3x the forward) x samples x epochs, over the phase's time, as a share (``pct_gemm``) of the best
round of a calibration GEMM of the template's largest layer at the training batch size (run
before and after the trial) and, on CUDA, of the device's dense peak.

Uses only the public API: ``l2bg.data.Task``, ``l2bg.net.templates``,
``l2bg.learn.training.default_config`` and ``l2bg.learn.learner.Learner(...).run(...)``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import pytest
import torch
from harness import FULL, Timing, calibrate_gemm, peak_flops, precision_kind, record
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

pytest.importorskip("numpy", reason="l2bg.data needs numpy")
pytest.importorskip("tqdm", reason="Learner.run needs tqdm")

from l2bg.data import Task  # noqa: E402
from l2bg.learn.learner import GrowStep, Learner  # noqa: E402
from l2bg.learn.training import default_config  # noqa: E402
from l2bg.net.templates import Template, convnet, mlp  # noqa: E402

SUITE = "trial"
PHASES = ("independent", "activations", "rsa", "training", "evaluation")
GOAL_S = {"split-cifar100": 60.0}  # on CUDA


@dataclass(frozen=True)
class Size:
    tasks: int
    train: int
    val: int
    test: int
    epochs: int | None = None  # None: the template's default recipe


SIZES = {
    "split-cifar100": {"full": Size(10, 4500, 500, 1000), "cpu": Size(3, 1000, 200, 200, epochs=1)},
    "pmnist": {"full": Size(5, 54000, 6000, 10000), "cpu": Size(3, 6000, 600, 1000, epochs=1)},
}
SHAPES = {"split-cifar100": (3, 32, 32), "pmnist": (784,)}
CLASSES = 10


def template_of(benchmark: str) -> Template:
    return convnet(in_channels=3, image_size=32) if benchmark == "split-cifar100" else mlp()


def synthetic_tasks(benchmark: str, size: Size, seed: int = 0) -> list[Task]:
    """Class-conditional data: each class a fixed random prototype plus noise (split-CIFAR:
    new classes per task; pmnist: one set of prototypes, a fixed pixel permutation per task)."""
    gen = torch.Generator().manual_seed(seed)
    shape = SHAPES[benchmark]
    protos = torch.rand(CLASSES, *shape, generator=gen)
    tasks = []
    for t in range(size.tasks):
        perm = None
        if benchmark == "split-cifar100":
            protos = torch.randn(CLASSES, *shape, generator=gen)
        elif t > 0:
            perm = torch.randperm(shape[0], generator=gen)

        def split(n: int, protos=protos, perm=perm) -> tuple[torch.Tensor, torch.Tensor]:
            y = torch.arange(n) % CLASSES
            x = protos[y] + 0.5 * torch.randn(n, *shape, generator=gen)
            return (x if perm is None else x[:, perm]).float(), y

        (xtr, ytr), (xv, yv), (xte, yte) = split(size.train), split(size.val), split(size.test)
        tasks.append(Task(f"{benchmark}-{t}", xtr, ytr, xv, yv, xte, yte, CLASSES,
                          classes=tuple(range(CLASSES)), permutation=perm))  # fmt: skip
    return tasks


def task_net(template: Template) -> nn.Module:
    """One task-net of the template, as plain modules (for counting FLOPs)."""
    layers = [slot.build() for slot in template.slots]
    if template.per_task_heads:
        layers.append(template.build_head(CLASSES))
    return nn.Sequential(*layers)


def train_flops_per_sample(template: Template, shape: tuple[int, ...]) -> float:
    """Forward + backward FLOPs of one task-net, per sample (batch of 4, divided)."""
    net = task_net(template)
    x = torch.randn(4, *shape)
    with FlopCounterMode(display=False) as counter:
        nn.functional.cross_entropy(net(x), torch.zeros(4, dtype=torch.long)).backward()
    return counter.get_total_flops() / 4


def largest_layer_gemm(template: Template, shape: tuple[int, ...], batch: int) -> tuple:
    """(m, k, n) of the layer with the most forward FLOPs, as a GEMM (a conv as im2col)."""
    best, x = (0, None), torch.zeros(1, *shape)
    with torch.no_grad():
        for layer in task_net(template).modules():
            if isinstance(layer, nn.Sequential):
                continue
            y = layer(x)
            if isinstance(layer, nn.Linear):
                mkn = (batch, layer.in_features, layer.out_features)
            elif isinstance(layer, nn.Conv2d):
                k = layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1]
                mkn = (batch * y.shape[-1] * y.shape[-2], k, layer.out_channels)
            else:
                mkn = None
            if mkn and mkn[0] * mkn[1] * mkn[2] > best[0]:
                best = (mkn[0] * mkn[1] * mkn[2], mkn)
            x = y
    return best[1]


WARM_UP = Size(2, 64, 16, 16, epochs=1)


def run_trial(tasks: list[Task], template: Template, config, device: str):
    """One L2BG grow sequence over ``tasks`` with δ = 0.5 at every step."""
    learner = Learner(tasks, template, config, benchmark=tasks[0].name.rsplit("-", 1)[0],
                      seed=0, device=device, cache=False, quiet=True)  # every net trained
    return learner.run("l2bg", sequence=[GrowStep(delta=0.5) for _ in tasks[1:]])


def cases():
    for device in ("cpu", "cuda"):
        for benchmark in SIZES:
            for scale in ("cpu", "full"):
                if (device == "cuda") != (scale == "full") and not (device == "cpu" and FULL):
                    continue
                marks = [pytest.mark.cuda] if device == "cuda" else []
                if device == "cuda" and not torch.cuda.is_available():
                    marks.append(pytest.mark.skip(reason="needs CUDA"))
                yield pytest.param(benchmark, scale, device, marks=marks,
                                   id=f"{benchmark}-{scale}-{device}")  # fmt: skip


@pytest.mark.parametrize("benchmark_name,scale,device", list(cases()))
def test_trial(benchmark_name, scale, device):
    size = SIZES[benchmark_name][scale]
    template = template_of(benchmark_name)
    name = "mlp" if benchmark_name == "pmnist" else "convnet"
    config = default_config(name, **({"epochs": size.epochs} if size.epochs else {}))
    tasks = synthetic_tasks(benchmark_name, size)
    shape = SHAPES[benchmark_name]
    gemm = largest_layer_gemm(template, shape, config.batch_size)
    calibrate = lambda when: calibrate_gemm(SUITE, *gemm, device=device, rounds=10,
                                            label=f"{benchmark_name} largest, {when}")  # fmt: skip
    gemm_rate = calibrate("before")
    run_trial(synthetic_tasks(benchmark_name, WARM_UP), template, config.replace(epochs=1),
              device)  # lazy imports, allocator and kernel caches: not part of the trial
    start = time.perf_counter()
    result = run_trial(tasks, template, config, device)
    wall = time.perf_counter() - start
    timings = result.record.timings
    gemm_rate = max(gemm_rate, calibrate("after"))  # the machine's rate: best of both
    label = (f"{benchmark_name} T={size.tasks} n={size.train}/{size.val}/{size.test} "
             f"ep={config.epochs}")  # fmt: skip
    goal = GOAL_S.get(benchmark_name) if device == "cuda" else None
    extra = {"goal_s": goal, "ratio_to_goal": round(wall / goal, 2)} if goal else {}
    record(suite=SUITE, op="trial", backend="l2bg δ=0.5", device=device, shape=label,
           dtype="float32", timing=Timing([wall]), params=result.record.params,
           **extra)  # fmt: skip
    per_sample = train_flops_per_sample(template, shape)
    trainings = {"independent": size.tasks, "training": size.tasks - 1}
    tf32 = device == "cuda" and torch.backends.cuda.matmul.allow_tf32
    peak = peak_flops(precision_kind(torch.float32, tf32), device)
    for phase in PHASES:
        seconds = timings.get(phase, 0.0)
        if seconds <= 0:
            continue
        notes = {"share_of_trial": round(seconds / wall, 3)}
        flops = None
        if phase in trainings:
            flops = per_sample * size.train * config.epochs * trainings[phase]
            notes["pct_gemm"] = round(100 * flops / seconds / gemm_rate, 1)
            if phase == "independent":
                notes["includes"] = "its evaluation"
        record(suite=SUITE, op=f"phase:{phase}", backend="l2bg δ=0.5", device=device,
               shape=label, dtype="float32", timing=Timing([seconds]), flops=flops,
               peak=peak if flops else None, **notes)  # fmt: skip
