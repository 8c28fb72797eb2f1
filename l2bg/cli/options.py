"""Command-line options shared by ``l2bg run`` and ``l2bg search``: declared once, so every data,
training and cache option works in both and reads into one :class:`l2bg.learn.settings.Settings`
(``Settings.from_args``)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

__all__ = ["HelpFormatter", "add_experiment_options", "add_strategy_option", "floats", "names"]


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default unless the text already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.required:
            return text + " (required)"
        if (action.option_strings and action.nargs != 0 and action.default is not None
                and action.default is not argparse.SUPPRESS
                and not re.search(r"\bdefault\b", text)):
            text += " (default: %(default)s)"
        return text


def floats(text: str) -> list[float]:
    """``--deltas 0.5,0.25`` and the like."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def ints(text: str) -> list[int]:
    """``--seeds 0,1,2`` and the like."""
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}"
                                         ) from exc


def names(text: str) -> list[str]:
    """``--bind-targets a,b`` and the like."""
    return [v.strip() for v in text.split(",") if v.strip()]


def add_experiment_options(p: argparse.ArgumentParser, *, benchmark_required: bool) -> None:
    """Data, training, RSA, device and cache options (the fields of Settings)."""
    from l2bg.data import BENCHMARKS

    d = p.add_argument_group("data")
    d.add_argument("--benchmark", required=benchmark_required, default=None, choices=BENCHMARKS,
                   help="pmnist: permuted MNIST, one shared softmax slot; split-mnist: 5 tasks "
                        "of 2 digits; split-cifar100: T tasks of 100/T classes (convnet); "
                        "rotated-mnist: each task rotates the digits by its own angle, one "
                        "shared softmax slot; vdd: the Visual Decathlon, one task per domain "
                        "(--data-root DIR holding decathlon-1.0)"
                        + ("" if benchmark_required else " (no default: required unless "
                                                         "--report)"))
    from l2bg.net.catalog import TEMPLATES

    d.add_argument("--template", default=None, metavar="NAME",
                   help=f"the task-net template: {TEMPLATES.help()} (default: the benchmark's, "
                        "mlp for the MNIST benchmarks, convnet for split-cifar100 and vdd); the "
                        "data are flattened, padded or resized to its input (l2bg.data.fit)")
    d.add_argument("--data-root", type=Path, default=None,
                   help="directory with MNIST IDX files (train-*/t10k-*, .gz or raw) or "
                        "cifar-100-python/ or decathlon-1.0 (annotations/, data/) (default: the "
                        "embedded MNIST digits)")
    d.add_argument("--tasks", type=int, default=None,
                   help="number of tasks (default: pmnist 10, split-mnist 5, split-cifar100 10, "
                        "rotated-mnist 10 or one per --angles value, vdd one per --domains "
                        "value or domain present)")
    d.add_argument("--angles", type=floats, default=None,
                   help="rotated-mnist: comma-separated rotation of each task in degrees, "
                        "counter-clockwise (default: T angles evenly spaced over [0, 180))")
    d.add_argument("--domains", type=names, default=None,
                   help="vdd: comma-separated decathlon domains in task order (default: every "
                        "domain present, in the decathlon's order)")
    d.add_argument("--max-per-class", type=int, default=None,
                   help="vdd: read at most this many images per class and split, a seeded "
                        "choice (default: all)")
    d.add_argument("--class-order-seed", type=int, default=None,
                   help="shuffle the class order of split benchmarks with this seed (default: "
                        "natural order)")
    d.add_argument("--seed", type=int, default=0,
                   help="seed of data splits, permutations, initialisation and shuffling "
                        "(default 0)")
    t = p.add_argument_group("training")
    t.add_argument("--epochs", type=int, default=None,
                   help="epochs per task (default: mlp 10, convnet 20, resnet26 and resnet18 "
                        "30)")
    t.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: mlp Adam 1e-3, convnet SGD 0.01, resnet26 and "
                        "resnet18 SGD 0.05)")
    t.add_argument("--batch-size", type=int, default=None,
                   help="mini-batch size (default: mlp 128, convnet 64, resnet26 and resnet18 "
                        "128)")
    t.add_argument("--shared-lr-scale", type=float, default=None,
                   help="learning-rate factor for bound (shared) layers; 0 freezes them "
                        "(default 0.1, as in the paper)")
    t.add_argument("--rsa-samples", type=int, default=None,
                   help="validation inputs fed to both nets for RSA (default min(500, |V_t|))")
    t.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N "
                        "(default auto)")
    from l2bg.conflict.rules import BIND_RULES, DEFAULT_BIND_RULE, DEFAULT_GROW_RULE, GROW_RULES
    from l2bg.conflict.similarity import DEFAULT_SIMILARITY, MEASURES

    c = p.add_argument_group("conflict model (strategy l2bg)")
    c.add_argument("--grow-rule", default=None, metavar="RULE",
                   help=f"which slots grow for δ: {GROW_RULES.help()} "
                        f"(default {DEFAULT_GROW_RULE})")
    c.add_argument("--bind-rule", default=None, metavar="RULE",
                   help=f"where a task binds: {BIND_RULES.help()} (default {DEFAULT_BIND_RULE})")
    c.add_argument("--similarity", default=None, metavar="MEASURE",
                   help=f"similarity of two nets' slots, conflict C = 1 − similarity: "
                        f"{MEASURES.help()} (default {DEFAULT_SIMILARITY})")
    c.add_argument("--granularity", default="layer", metavar="layer|group:G",
                   help="the conflict model's unit: layer (one per expandable slot) or group:G "
                        "(each slot whose main layer is a conv or linear of C >= G channels cut "
                        "into G contiguous channel groups; the nucleus runs over all of them) "
                        "(default layer)")
    g = p.add_argument_group("growth")
    g.add_argument("--grow-mode", default="copy", choices=("copy", "adapt"),
                   help="copy: a grown unit is the task's own copy of the bound task's; adapt: "
                        "the bound node stays shared and the task gets a zero-initialised "
                        "adapter on it (1x1 conv for conv slots, rank-r linear correction for "
                        "linear ones) (default copy)")
    g.add_argument("--adapter-rank", type=int, default=8, metavar="R",
                   help="rank of the linear adapters of --grow-mode adapt, lowered so that an "
                        "adapter never has more parameters than a copy of its unit (default 8)")
    g.add_argument("--task-bn", action="store_true",
                   help="every task owns the batch-norm parameters and running statistics at "
                        "every slot, shared or not")
    t.add_argument("--cache-dir", default=None,
                   help="cache of independent nets (and the search's memo), shared by every "
                        "run and search (default $L2BG_CACHE_DIR, else ~/.cache/l2bg)")


def add_strategy_option(p: argparse.ArgumentParser, *, default: str | None) -> None:
    from l2bg.learn import strategies

    helps = "; ".join(f"{n}: {strategies.get(n).help}" for n in strategies.names())
    p.add_argument("--strategy", required=default is None, default=default,
                   choices=strategies.names(),
                   help=helps + ("" if default is None else f" (default: {default})"))
