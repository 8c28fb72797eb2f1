"""``l2bg rsa``: layer x layer RSA of activations on disk (one network against itself, or two or
more networks fed the same inputs); writes similarity.json, similarity.csv and similarity.png."""

from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Any

from l2bg.base.errors import L2BGError
from l2bg.cli.options import HelpFormatter, names

__all__ = ["add_rsa_parser", "cmd_rsa"]


def add_rsa_parser(sub: Any) -> argparse.ArgumentParser:
    r = sub.add_parser(
        "rsa", formatter_class=HelpFormatter,
        help="layer x layer RSA of activations on disk (JSON, CSV and heatmap)",
        description="Compare the representational geometry of every layer of one network with\n"
                    "every layer of another (or of itself, or of several networks), from\n"
                    "activations on disk: a directory of per-layer .npy/.safetensors/.h5 files\n"
                    "(as l2bg.rsa.capture writes them), one .safetensors/.h5 file with a tensor\n"
                    "per layer, or one .npy file. RDMs (--rdm) are streamed in slices of\n"
                    "features. Writes similarity.json, similarity.csv and\n"
                    "similarity.png to --out.")
    from l2bg.rsa import methods  # after add_parser: `l2bg --help` lists rsa without torch
    from l2bg.rsa.distributed import SHARDS
    from l2bg.rsa.stream import RDMS

    r.add_argument("sources", nargs="+", type=Path, metavar="SOURCE",
                   help="activations of a network (directory or file); give two (or more) to "
                        "compare networks")
    r.add_argument("--layers", type=names, default=None,
                   help="comma-separated layer names to use (default: every layer)")
    r.add_argument("--layers-b", type=names, default=None,
                   help="layer names of the second source (default: --layers)")
    r.add_argument("--measure", default="rsa", choices=["rsa", "linear-cka", "cka-minibatch"],
                   help="rsa: RDMs compared by --method; linear-cka: biased linear CKA of the "
                        "stored activations; cka-minibatch: minibatch CKA (unbiased HSIC summed "
                        "over sample batches of --batch-size)")
    r.add_argument("--rdm", default=None, choices=RDMS,
                   help="RDM of each layer (--measure rsa only): correlation: 1 - Pearson r of "
                        "two samples' features (l2bg's, docs/design.md); euclidean: squared "
                        "distance over the number of features (rsatoolbox's calc_rdm); "
                        "default correlation")
    r.add_argument("--method", default=None, choices=methods.names(),
                   help="RDM comparison (--measure rsa only; default spearman)")
    r.add_argument("--batch-size", type=int, default=256,
                   help="samples per batch of --measure cka-minibatch (at least 4)")
    r.add_argument("--kernel", default=None, choices=["linear", "rbf"],
                   help="CKA kernel of --measure cka-minibatch (rbf: bandwidth --sigma times "
                        "the batch's median pairwise distance; default linear)")
    r.add_argument("--sigma", type=float, default=None,
                   help="RBF bandwidth factor (default 1)")
    r.add_argument("--samples", type=int, default=None,
                   help="use this many samples, drawn with --seed (default: all)")
    r.add_argument("--seed", type=int, default=0, help="seed of the sample draw")
    r.add_argument("--device", default="auto",
                   help="auto (CUDA when available, else CPU), cpu, cuda or cuda:N")
    r.add_argument("--backend", default="auto", choices=["auto", "torch", "triton"],
                   help="RDM backend (auto: Triton on CUDA, torch otherwise)")
    r.add_argument("--slice-width", type=int, default=4096,
                   help="features read and accumulated at a time")
    r.add_argument("--shard", default="split", choices=SHARDS,
                   help="under torchrun (several processes or machines): split: every rank "
                        "reads its share of the same SOURCEs (rsa: a slice of every layer's "
                        "feature columns; cka-minibatch: every W-th batch); own: each rank's "
                        "SOURCEs ('{rank}' in a path becomes the rank) hold its own features "
                        "(rsa) or samples (cka-minibatch)")
    r.add_argument("--out", required=True,
                   help="output directory (may hold other files; none is replaced)")
    r.add_argument("--quiet", action="store_true", help="no progress bar and no table")
    r.set_defaults(func=cmd_rsa)
    return r


def cmd_rsa(args: argparse.Namespace) -> int:
    """Under torchrun every rank joins the process group (:mod:`l2bg.rsa.distributed`), works
    on its shard and only rank 0 claims and writes ``--out``; one process otherwise."""
    from l2bg.learn.training import resolve_device
    from l2bg.rsa import distributed

    if args.layers_b is not None and len(args.sources) < 2:
        raise L2BGError("--layers-b names the second source's layers; give two sources")
    try:
        device = resolve_device(args.device)
    except RuntimeError as exc:
        raise L2BGError(f"--device {args.device!r} is not a device ({exc})") from None
    layers = [args.layers] * len(args.sources)
    if args.layers_b is not None:
        layers[1] = args.layers_b
    if args.measure != "cka-minibatch" and (args.kernel, args.sigma) != (None, None):
        raise L2BGError(f"--kernel and --sigma apply to --measure cka-minibatch only, not "
                        f"{args.measure}")
    if args.measure != "rsa":
        _check_cka(args)
    elif args.method is None:
        args.method = "spearman"
    rank, world, device = distributed.init_from_env(device)
    if args.shard == "own":  # each rank's own files; '{rank}' in a path names them
        args.sources = [Path(str(s).replace("{rank}", str(rank))) for s in args.sources]
    ok = False
    try:
        code = _claim_compute_write(args, layers, device, rank, world)
        ok = True
        return code
    finally:
        distributed.shutdown(ok)


def _compute(args: argparse.Namespace, layers: list[Any], device: Any) -> tuple[Any, dict, str]:
    """(LayerMatrix, its config, what the first printed line calls it)."""
    config = {"sources": [str(s) for s in args.sources], "layers": layers,
              "measure": args.measure, "device": str(device)}
    if args.measure == "rsa":
        from l2bg.rsa.layers import layer_similarity

        rdm = args.rdm or "correlation"
        result = layer_similarity(args.sources, layers=layers, method=args.method,
                                  samples=args.samples, seed=args.seed, device=device,
                                  backend=args.backend, slice_width=args.slice_width,
                                  progress=False if args.quiet else None, rdm=rdm,
                                  shard=args.shard)
        config.update(method=args.method, rdm=rdm, samples=args.samples, seed=args.seed,
                      backend=args.backend, slice_width=args.slice_width)
        return result, config, f"similarity of {rdm}-distance RDMs"
    from l2bg.rsa.cka_stream import sources_cka

    result = sources_cka(args.sources, layers, measure=args.measure,
                         batch_size=args.batch_size, kernel=args.kernel or "linear",
                         sigma=1.0 if args.sigma is None else args.sigma, device=device,
                         shard=args.shard)
    config.update(batch_size=args.batch_size, kernel=args.kernel, sigma=args.sigma)
    return result, config, "of activations"


def _claim_compute_write(args: argparse.Namespace, layers: list[Any], device: Any, rank: int,
                         world: int) -> int:
    """Rank 0 claims --out before the work (the others learn whether it could), every rank
    computes its share, rank 0 publishes."""
    from l2bg.base.outdir import OutDir
    from l2bg.rsa import distributed
    from l2bg.rsa.layers import OUTPUTS

    with contextlib.ExitStack() as stack:
        target, refused = None, None
        if rank == 0:
            try:
                target = stack.enter_context(OutDir(args.out, OUTPUTS, "rsa"))
            except L2BGError as exc:
                refused = exc
        if not distributed.agree(refused is None):
            raise refused or L2BGError(f"rank 0 could not claim --out {args.out}; see its error")
        result, config, what = _compute(args, layers, device)
        if target is None:
            return 0
        result.info["config"] = {**config, "shard": args.shard, "world_size": world}
        result.save(target.staging)
        target.publish()
    if not args.quiet:
        print(f"{result.method} {what} over {result.n} samples")
        print(_finished(result, target.path))
    return 0


def _check_cka(args: argparse.Namespace) -> None:
    """``--measure linear-cka | cka-minibatch`` (:mod:`l2bg.rsa.cka_stream`): the options of
    the other measure are one-line errors."""
    if args.method is not None:
        raise L2BGError(f"--method compares RDMs and applies to --measure rsa only, not "
                        f"{args.measure}; drop --method")
    if args.samples is not None:
        raise L2BGError(f"--samples applies to --measure rsa only, not {args.measure}")
    if args.rdm is not None:
        raise L2BGError(f"--rdm chooses the RDMs of --measure rsa only, not {args.measure}; "
                        "drop --rdm")
    if args.measure == "cka-minibatch" and args.batch_size < 4:
        raise L2BGError(f"--batch-size must be at least 4 (the unbiased HSIC divides by "
                        f"n(n-3)), got {args.batch_size}")


def _finished(result: Any, out: Path) -> str:
    """The end of a run, read at a glance: which source is rows, the table, what was written
    where."""
    rows, cols = result.axis_titles()
    return "\n".join([
        f"rows: {rows}; columns: {cols}",
        table(result.rows, result.cols, result.values),
        f"written to {out}/:",
        "  similarity.csv   the matrix (first row: column labels; first column: row labels)",
        "  similarity.png   heatmap of the matrix",
        "  similarity.json  the matrix, its labels, the sources and the settings"])


def table(rows: list[str], cols: list[str], values: Any) -> str:
    """The matrix as aligned text: every column as wide as its widest label or number, and
    two spaces between columns, so neighbouring numbers never touch."""
    cells = [[f"{v:.4f}" for v in row] for row in values]
    width = max([len(c) for c in cols] + [len(x) for row in cells for x in row])
    first = max(len(r) for r in rows)
    lines = [" " * first + "".join(f"  {c:>{width}}" for c in cols)]
    lines += [f"{name:<{first}}" + "".join(f"  {x:>{width}}" for x in row)
              for name, row in zip(rows, cells, strict=True)]
    return "\n".join(lines)
