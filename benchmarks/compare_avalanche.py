"""l2bg against Avalanche's strategies on the same task-labelled streams, one markdown table.

Every method learns the same l2bg benchmark converted to an Avalanche stream
(:func:`l2bg.avalanche.to_avalanche`: task label t, class ids from zero per task), with the same
epochs, optimiser (Adam, lr 1e-3), mini-batch size (128) and seed, and is evaluated by Avalanche's
accuracy metric on the test experiences learned so far after every experience; the accuracy
matrix gives the final average accuracy and BWT (:mod:`l2bg.learn.metrics`; BWT is minus
Avalanche's average forgetting). Parameters are counted the same way for every method: every
parameter of the final model (``sum(p.numel() for p in model.parameters())``). Wall time is
training plus the evaluations, on this machine.

Methods and their networks (input 784, hidden 300-300-300, ReLU):

* l2bg (``L2BGStrategy``): the paper's grow rule ``conflict`` and the best rule of the quality
  tables (``similar-first``), each at two δ; the JointNet of the MLP with one head per task;
* independent: one such MLP per task (l2bg's ``independent`` strategy);
* Naive, EWC (λ = 1000, separate penalties), LwF (α = 1, T = 2): one MLP, one head per task
  (Avalanche's ``MultiHeadClassifier``);
* PNN: Avalanche's ``PNN`` (one MLP column of 3 × 300 per task, MLP adapters, one head per task);
* PackNet: Avalanche's ``PackNetModel`` over one MLP with one head as wide as the largest task
  (its weights split between tasks by PackNet's masks), pruning half of the free weights after
  each task and fine-tuning for the last epoch.

Run: ``python benchmarks/compare_avalanche.py --data-root DIR --out runs/aval`` with DIR holding the
MNIST t10k IDX files (the real MNIST test set, split 70/15/15 per seed). Needs
``pip install l2bg[avalanche]``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

KEY = "Top1_Acc_Exp/eval_phase/test_stream/Task{t:03d}/Exp{t:03d}"
HIDDEN = (300, 300, 300)
LR, BATCH = 1e-3, 128
L2BG_RUNS = [("conflict", 0.25), ("conflict", 0.5), ("similar-first", 0.25),
             ("similar-first", 0.5)]
MLP = "MLP 784-300-300-300"


def _evaluator() -> Any:
    from avalanche.evaluation.metrics import accuracy_metrics
    from avalanche.training.plugins import EvaluationPlugin

    return EvaluationPlugin(accuracy_metrics(experience=True), loggers=[])


def _trunk(inputs: int) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for n_in, n_out in zip((inputs, *HIDDEN[:-1]), HIDDEN, strict=True):
        layers += [nn.Linear(n_in, n_out), nn.ReLU()]
    return nn.Sequential(*layers)


def _multihead(inputs: int) -> nn.Module:
    from avalanche.models import MultiHeadClassifier, MultiTaskModule

    class MultiHeadMLP(MultiTaskModule):
        """The MLP trunk shared by every task, one head per task."""

        def __init__(self) -> None:
            super().__init__()
            self.features = _trunk(inputs)
            self.classifier = MultiHeadClassifier(HIDDEN[-1])

        def forward_single_task(self, x: torch.Tensor, task_label: int) -> torch.Tensor:
            return self.classifier(self.features(x), task_label)

    return MultiHeadMLP()


def _common(args: argparse.Namespace) -> dict[str, Any]:
    return {"criterion": nn.CrossEntropyLoss(), "train_mb_size": BATCH,
            "train_epochs": args.epochs, "eval_mb_size": 1024, "device": "cpu",
            "evaluator": _evaluator()}


def _l2bg(rule: str | None, delta: float | None, args: argparse.Namespace, bm: Any,
          inputs: int, classes: int) -> Any:
    from l2bg.avalanche import L2BGStrategy
    from l2bg.learn.training import TrainConfig
    from l2bg.net.templates import mlp

    return L2BGStrategy(template=mlp(inputs, HIDDEN, shared_head=False),
                        strategy="l2bg" if rule else "independent", delta=delta,
                        grow_rule=rule, train=TrainConfig("adam", LR, epochs=args.epochs,
                                                          batch_size=BATCH, seed=args.seed),
                        seed=args.seed, valid_stream=bm.valid_stream, eval_mb_size=1024,
                        evaluator=_evaluator())


def _avalanche(kind: str, args: argparse.Namespace, bm: Any, inputs: int, classes: int) -> Any:
    from avalanche.training import EWC, LwF, Naive, PackNet, PNNStrategy

    if kind == "pnn":
        from avalanche.models import PNN

        model = PNN(num_layers=len(HIDDEN), in_features=inputs,
                    hidden_features_per_column=HIDDEN[0], adapter="mlp")
        return PNNStrategy(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=LR),
                           **_common(args))
    if kind == "packnet":
        from avalanche.models.packnet import PackNetModel

        model = PackNetModel(nn.Sequential(*_trunk(inputs), nn.Linear(HIDDEN[-1], classes)))
        return PackNet(model=model, optimizer=torch.optim.Adam(model.parameters(), lr=LR),
                       post_prune_epochs=1, prune_proportion=0.5, **_common(args))
    model = _multihead(inputs)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    if kind == "ewc":
        return EWC(model=model, optimizer=opt, ewc_lambda=1000.0, **_common(args))
    if kind == "lwf":
        return LwF(model=model, optimizer=opt, alpha=1.0, temperature=2.0, **_common(args))
    return Naive(model=model, optimizer=opt, **_common(args))


def methods() -> dict[str, tuple[str, Callable[..., Any]]]:
    """Method name -> (its network, a builder of its Avalanche strategy)."""
    out: dict[str, tuple[str, Callable[..., Any]]] = {}
    for rule, delta in L2BG_RUNS:
        out[f"l2bg {rule} δ={delta}"] = (f"JointNet of the {MLP}, a head per task",
                                         lambda *a, r=rule, d=delta: _l2bg(r, d, *a))
    out["independent"] = (f"one {MLP} per task", lambda *a: _l2bg(None, None, *a))
    out["Naive"] = (f"one {MLP}, a head per task", lambda *a: _avalanche("naive", *a))
    out["EWC"] = (f"one {MLP}, a head per task", lambda *a: _avalanche("ewc", *a))
    out["LwF"] = (f"one {MLP}, a head per task", lambda *a: _avalanche("lwf", *a))
    out["PNN"] = ("PNN: an MLP column 784-300-300-300 per task, MLP adapters, a head per task",
                  lambda *a: _avalanche("pnn", *a))
    out["PackNet"] = (f"one {MLP}, one shared head, weights masked per task",
                      lambda *a: _avalanche("packnet", *a))
    return out


def run_one(build: Callable[..., Any], args: argparse.Namespace, bench: Any, bm: Any
            ) -> dict[str, Any]:
    """Train ``build``'s strategy on every experience, evaluating after each one."""
    from l2bg.learn import metrics

    torch.manual_seed(args.seed)
    inputs = math.prod(bench.tasks[0].input_shape)
    classes = max(t.num_classes for t in bench.tasks)
    strategy = build(args, bm, inputs, classes)
    T = len(bm.train_stream)
    R: list[list[float | None]] = []
    start = time.perf_counter()
    for i, exp in enumerate(bm.train_stream):
        strategy.train(exp)
        res = strategy.eval(bm.test_stream[:i + 1])
        R.append([float(res[KEY.format(t=j)]) for j in range(i + 1)] + [None] * (T - i - 1))
    wall = time.perf_counter() - start
    return {"acc": metrics.average_accuracy(R), "bwt": metrics.bwt(R),
            "params": sum(p.numel() for p in strategy.model.parameters()),
            "wall_s": wall, "matrix": R}


def _fmt(values: list[float], scale: float = 100.0, digits: int = 2) -> str:
    vals = [v * scale for v in values]
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


def table(rows: dict[str, dict[str, list[dict[str, Any]]]], nets: dict[str, str],
          args: argparse.Namespace) -> str:
    lines = [f"Avalanche {_version('avalanche-lib')}, torch {torch.__version__}; "
             f"{args.tasks} tasks, {args.epochs} epochs, Adam lr {LR}, batch {BATCH}, seeds "
             f"{args.seeds}; load average at the end {os.getloadavg()[0]:.1f}.", ""]
    for bench, by_method in rows.items():
        lines += [f"**{bench}** (mean ± sd over seeds)", "",
                  "| method | network | final avg acc % | BWT % | parameters | wall s |",
                  "|---|---|---|---|---|---|"]
        for name, runs in by_method.items():
            lines.append(f"| {name} | {nets[name]} | {_fmt([r['acc'] for r in runs])} | "
                         f"{_fmt([r['bwt'] for r in runs])} | "
                         f"{_fmt([r['params'] for r in runs], 1.0, 0)} | "
                         f"{_fmt([r['wall_s'] for r in runs], 1.0, 1)} |")
        lines.append("")
    return "\n".join(lines)


def _version(dist: str) -> str:
    from importlib.metadata import version

    return version(dist)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--benchmarks", nargs="+",
                   default=["pmnist", "split-mnist", "rotated-mnist"])
    p.add_argument("--data-root", default=None, help="MNIST IDX files (t10k alone: 70/15/15)")
    p.add_argument("--tasks", type=int, default=5)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=None, help="a subset of the method names")
    p.add_argument("--out", default="runs/compare_avalanche")
    args = p.parse_args(argv)
    if args.epochs < 2:
        p.error("--epochs must be >= 2 (PackNet fine-tunes for the last one)")
    from l2bg.avalanche import to_avalanche
    from l2bg.data import build_benchmark

    warnings.filterwarnings("ignore", category=UserWarning)
    torch.set_num_threads(1)
    catalogue = methods()
    chosen = args.methods or list(catalogue)
    unknown = sorted(set(chosen) - set(catalogue))
    if unknown:
        p.error(f"unknown methods {unknown}; choose from {list(catalogue)}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {}
    for name in args.benchmarks:
        rows[name] = {m: [] for m in chosen}
        for seed in args.seeds:
            args.seed = seed
            bench = build_benchmark(name, num_tasks=args.tasks, seed=seed,
                                    data_root=args.data_root)
            bm = to_avalanche(bench)
            for m in chosen:
                r = run_one(catalogue[m][1], args, bench, bm)
                rows[name][m].append(r)
                print(f"{name} s{seed} {m}: acc {100 * r['acc']:.2f} bwt "
                      f"{100 * (r['bwt'] or 0):.2f} params {r['params']} "
                      f"{r['wall_s']:.1f} s", flush=True)
            (out / "results.json").write_text(json.dumps(rows, indent=1))
    text = table(rows, {m: catalogue[m][0] for m in chosen}, args)
    (out / "table.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
