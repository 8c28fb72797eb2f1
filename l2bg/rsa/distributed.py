"""RSA and CKA over several processes and machines, on torch.distributed (docs/design.md §2.7,
"Distributed").

Launch with ``torchrun``: :func:`init_from_env` joins the default process group from torchrun's
environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``; env://)
with gloo for CPU tensors and NCCL for CUDA devices, under a timeout (``L2BG_DIST_TIMEOUT``
seconds, default 300), so a rank that dies makes the others stop with one line, not hang. Every
collective goes through :func:`_collective`, which turns a failure into that line.

Two schemes, each the one-process result:

* minibatch CKA, data sharded: each rank adds its batches to a
  :class:`l2bg.rsa.cka_stream.CKAAccumulator`; :func:`reduce_cka` all-reduces its float64 state
  (cross and self HSIC₁ sums, the constant-layer scales, sample and batch counts) at once;
* correlation RDMs, features sharded (:func:`sharded_rdm`): each rank streams its disjoint slice
  of feature columns (or its own file) into a :class:`l2bg.rsa.stream.TorchRDMStream`; the
  per-row power-of-two scales are all-reduced (max), the partial centred co-moments, row sums
  and feature counts are merged by Chan et al.'s rule, and the stream's ``result()`` finishes
  the RDM on every rank.
"""

from __future__ import annotations

import datetime
import os
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError

__all__ = ["SHARDS", "TIMEOUT_ENV", "active", "agree", "all_reduce_", "feature_shard",
           "init_from_env", "rank_world", "reduce_cka", "same_on_all_ranks", "sharded_rdm",
           "shutdown"]

TIMEOUT_ENV = "L2BG_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 300.0
#: How the ranks share the work: ``split``, each reads its share of the same sources or loader
#: (CKA: every W-th batch; RDMs: a slice of the feature columns); ``own``, each rank's sources or
#: loader hold its own samples (CKA) or features (RDMs).
SHARDS = ("split", "own")


def active() -> bool:
    """Whether a default process group is initialised (this process is one rank of a job)."""
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the initialised default process group, else (0, 1)."""
    import torch.distributed as dist

    return (dist.get_rank(), dist.get_world_size()) if active() else (0, 1)


def _launched() -> bool:
    """torchrun's environment: WORLD_SIZE > 1, or a world of 1 with a rendezvous address (a
    plain ``python`` run has neither, and stays one process without a group)."""
    world = os.environ.get("WORLD_SIZE", "")
    if not world.strip():
        return False
    try:
        n = int(world)
    except ValueError:
        raise L2BGError(f"WORLD_SIZE={world!r} is not a number; launch with torchrun") from None
    return n > 1 or ("MASTER_ADDR" in os.environ and "MASTER_PORT" in os.environ)


def init_from_env(device: str | torch.device = "cpu", timeout_s: float | None = None,
                  ) -> tuple[int, int, torch.device]:
    """Join the process group torchrun describes (once): gloo for a CPU ``device``, NCCL for
    CUDA (each rank on ``cuda:LOCAL_RANK`` when no index is given). Returns (rank, world size,
    this rank's device); (0, 1, device) outside torchrun. ``timeout_s`` (default
    ``$L2BG_DIST_TIMEOUT`` or 300) bounds the rendezvous and every collective."""
    import torch.distributed as dist

    device = torch.device(device)
    if device.type == "cuda" and device.index is None and _launched():
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device("cuda", local % max(1, torch.cuda.device_count()))
    if active() or not _launched():
        return (*rank_world(), device)
    if not dist.is_available():
        raise L2BGError("torchrun started this process but this torch has no torch.distributed; "
                        "run one process")
    missing = [k for k in ("RANK", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
    if missing:
        raise L2BGError(f"WORLD_SIZE={os.environ['WORLD_SIZE']} but {missing[0]} is not set; "
                        "launch with torchrun")
    if timeout_s is None:
        raw = os.environ.get(TIMEOUT_ENV, str(DEFAULT_TIMEOUT_S))
        try:
            timeout_s = float(raw)
        except ValueError:
            raise L2BGError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(device)
    try:
        dist.init_process_group(backend, init_method="env://",
                                timeout=datetime.timedelta(seconds=timeout_s),
                                **({"device_id": device} if backend == "nccl" else {}))
    except Exception as exc:  # noqa: BLE001 - any rendezvous failure: one line naming the peer
        raise L2BGError(f"cannot join the {backend} process group at {os.environ['MASTER_ADDR']}:"
                        f"{os.environ['MASTER_PORT']} ({_short(exc)}); start every rank with "
                        "the same torchrun arguments") from None
    return (*rank_world(), device)


def shutdown(ok: bool = True) -> None:
    """Leave the process group: after a barrier when this rank succeeded (no rank tears the
    group down under a peer still working), at once when it failed (the peers' next collective
    fails with one line)."""
    import torch.distributed as dist

    if not active():
        return
    try:
        if ok:
            _collective(dist.barrier)
    finally:
        dist.destroy_process_group()


def _short(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def _collective(fn: Callable[[], Any]) -> None:
    try:
        fn()
    except (RuntimeError, ValueError) as exc:  # DistBackendError, DistNetworkError, timeouts
        rank, world = rank_world()
        raise L2BGError(f"rank {rank} of {world}: a collective failed, another rank has exited "
                        f"or timed out ({_short(exc)}); see that rank's error") from None


def _comm_device() -> torch.device:
    """Where the group's collectives run: the current CUDA device for NCCL, else the CPU."""
    import torch.distributed as dist

    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_(t: Tensor, op: str = "sum") -> Tensor:
    """``t`` replaced by its sum (or ``op='max'``) over all ranks, in place when ``t`` is a
    contiguous tensor on the group's device, else through one copy; returns ``t``."""
    import torch.distributed as dist

    red = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op]
    dev = _comm_device()
    buf = t if t.device == dev and t.is_contiguous() else t.detach().to(dev).contiguous()
    _collective(lambda: dist.all_reduce(buf, op=red))
    if buf is not t:
        t.copy_(buf)
    return t


def agree(ok: bool) -> bool:
    """Whether every rank is ``ok`` (one all-reduce); True outside a group."""
    if not active():
        return ok
    flag = torch.tensor([0.0 if ok else 1.0], dtype=torch.float64)
    return float(all_reduce_(flag, "max")) == 0.0


def same_on_all_ranks(values: Sequence[int], what: str) -> None:
    """One line when the ranks disagree on ``values`` (sample counts, layer counts...): they were
    given different SOURCE arguments, and their sums would be meaningless."""
    if not active():
        return
    v = torch.tensor([float(x) for x in values], dtype=torch.float64)
    both = all_reduce_(torch.cat([v, -v]), "max")
    hi, lo = both[: len(v)], -both[len(v):]
    if not bool(torch.equal(hi, lo)):
        bad = int((hi != lo).nonzero()[0])
        raise L2BGError(f"the ranks disagree on {what} (from {int(lo[bad])} to {int(hi[bad])}); "
                        "give every rank the same SOURCE arguments and options")


# ------------------------------------------------------------------------------------- CKA


def reduce_cka(acc: Any, p: int, q: int) -> None:
    """Sum a :class:`l2bg.rsa.cka_stream.CKAAccumulator` of ``p`` x ``q`` layers over all ranks
    (one all-reduce of its float64 state; a rank that saw no batch adds zeros)."""
    if not active():
        return
    acc.set_state(all_reduce_(acc.state(p, q)), p, q)


# ------------------------------------------------------------------------------------- RDMs


def feature_shard(d: int, rank: int, world: int, unit: int = 1) -> tuple[int, int]:
    """Feature columns [lo, hi) of ``rank``: balanced, disjoint and covering [0, d), in whole
    units of ``unit`` columns (a layer read in whole units of its first per-sample dimension)."""
    if unit < 1 or d % unit:
        unit = 1
    units = d // unit
    return unit * (units * rank // world), unit * (units * (rank + 1) // world)


def sharded_rdm(read: Callable[[int, int], Tensor], n: int, d: int, *, unit: int = 1,
                slice_width: int = 4096, device: str | torch.device = "cpu",
                own: bool = False, name: str = "", rdm: str = "correlation") -> Tensor:
    """The packed RDM (``rdm``: correlation or euclidean distance) of n samples whose
    features are split across the ranks. ``own=False``: this rank reads columns
    :func:`feature_shard` of [0, d) through ``read(start, stop)``; ``own=True``: its ``read``
    covers its own d features (its own file). The partial co-moments are merged over all
    ranks; every rank returns the RDM (float32, or float64 for float64 activations, as one
    process's stream)."""
    from l2bg.rsa.reference import acc_dtype
    from l2bg.rsa.stream import TorchRDMStream, check_accumulator

    rank, world = rank_world()
    same_on_all_ranks([n], f"the number of samples of layer {name!r}")
    lo, hi = (0, d) if own else feature_shard(d, rank, world, unit)
    check_accumulator(n, torch.float64)
    device = torch.device(device)
    acc: TorchRDMStream | None = None
    start = lo
    while start < hi:
        chunk = read(start, min(hi, start + max(1, slice_width)))
        if acc is None:
            acc = TorchRDMStream(n, device=device, dtype=acc_dtype(chunk.dtype))
        if chunk.shape[1] == 0:
            break
        acc.update(chunk.to(device))
        start += chunk.shape[1]
    wide = [0.0 if acc is None else float(acc.dtype == torch.float64)]
    wide_any = float(all_reduce_(torch.tensor(wide, dtype=torch.float64), "max")) == 1.0
    dtype = torch.float64 if wide_any else torch.float32  # float64 on one rank: on all
    if acc is None or acc.dtype != dtype:
        acc = _restart(acc, n, device, dtype)
    # one power-of-two scale per row across ranks (max), then Chan's merge about the union's
    # row means: sum d_r mu_r and d_r give them, each rank re-centres, the co-moments are summed
    acc.rescale_rows(all_reduce_(acc.row_exponents().clone(), "max"))
    d_r = float(acc.d_seen)
    sums = all_reduce_(torch.cat([acc.mean[0].to(torch.float64) * d_r,
                                  torch.tensor([d_r], dtype=torch.float64, device=device)]))
    total = float(sums[-1])
    acc.centre_about((sums[:n] / total if total else sums[:n])[None])
    for g in acc.gram:
        all_reduce_(g)
    acc.d_seen = int(total)
    return acc.result(triu=True, rdm=rdm)


def _restart(acc: Any, n: int, device: torch.device, dtype: torch.dtype) -> Any:
    """An empty rank's stream, or this rank's re-expressed in the dtype another rank needs."""
    from l2bg.rsa.stream import TorchRDMStream

    fresh = TorchRDMStream(n, device=device, dtype=dtype)
    if acc is not None:
        fresh.rescale_rows(acc.row_exponents())
        fresh.mean.copy_(acc.mean)
        for g_new, g in zip(fresh.gram, acc.gram, strict=True):
            g_new.copy_(g)
        fresh.d_seen = acc.d_seen
    return fresh
