"""How the RSA kernels are launched: device limits, the tiling choice, the shared-memory check,
the device guard and the one host read per call. Pure Python (no triton import), so every
policy here is testable on a machine without a GPU by passing a device's limits.

Tiling of the Gram kernel (``gram_config``): output tiles of ``block`` x ``block`` over the upper
triangle, optionally split along d into ``split_k`` partial Grams. The split is chosen with a
wave model: ``blocks_per_sm`` programs run at once on each of the ``sms`` SMs (bounded by
registers, shared memory and threads), programs run in waves, and a launch costs

    waves x (d-block steps per program + epilogue)  [+ the reduction of the partial Grams]

in units of one d-block step. At n = 2000 on an H100 (132 SMs, one 8-warp block per SM) the
136 tiles of one unsplit launch take two waves, the second with 4 programs (half the machine
idle for half the time); the model splits d so that the last wave is a small part of the whole.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from l2bg.base.errors import L2BGError


@dataclass(frozen=True)
class DeviceLimits:
    """What a launch configuration must fit on one device: its SMs, shared memory and registers
    (bytes of shared memory per block are the opt-in maximum a kernel may request)."""

    name: str
    sms: int
    smem_per_block: int
    smem_per_sm: int
    regs_per_sm: int = 65536
    threads_per_sm: int = 2048


A100 = DeviceLimits("A100 (sm_80)", sms=108, smem_per_block=166912, smem_per_sm=167936)
H100 = DeviceLimits("H100 SXM (sm_90)", sms=132, smem_per_block=232448, smem_per_sm=233472)


@functools.lru_cache(maxsize=16)
def device_limits(device: torch.device) -> DeviceLimits:
    """The limits of a CUDA device, read from its properties (once per device)."""
    p = torch.cuda.get_device_properties(device)
    smem_block = getattr(p, "shared_memory_per_block_optin", 0) or 48 * 1024
    return DeviceLimits(
        name=p.name,
        sms=p.multi_processor_count,
        smem_per_block=smem_block,
        smem_per_sm=getattr(p, "shared_memory_per_multiprocessor", 0) or smem_block,
        regs_per_sm=getattr(p, "regs_per_multiprocessor", 0) or 65536,
        threads_per_sm=getattr(p, "max_threads_per_multi_processor", 0) or 2048,
    )


# ------------------------------------------------------------------------------- shared memory


def gram_shared_bytes(block: int, block_k: int, dtype: torch.dtype, num_stages: int) -> int:
    """Shared memory the Gram kernel asks for (an upper bound of what Triton allocates, checked
    against the compiler for every configuration by tests/kernels/test_gpu_compile.py): the
    ``num_stages`` pipelined operand tiles (2 x block x block_k elements each), or the
    block x block fp32 accumulator when the epilogue converts its layout, whichever is larger."""
    item = dtype.itemsize
    return max(max(num_stages, 1) * 2 * block * block_k * item, block * block * 4)


def check_shared_memory(
    block: int, block_k: int, dtype: torch.dtype, num_stages: int, limit: int | None
) -> None:
    """One-line error when the Gram kernel's tiles cannot fit ``limit`` bytes per block (the
    device's opt-in maximum; None: no limit, as in the interpreter)."""
    if limit is None:
        return
    need = gram_shared_bytes(block, block_k, dtype, num_stages)
    if need > limit:
        name = str(dtype).removeprefix("torch.")
        raise L2BGError(
            f"rdm kernel: block={block}, block_k={block_k}, num_stages={num_stages} with {name} "
            f"needs {need // 1024} KiB of shared memory but this device allows "
            f"{limit // 1024} KiB per block; use a smaller block, block_k or num_stages"
        )


# ------------------------------------------------------------------------------- tiling

GRAM_REGISTERS = 256
"""Registers per thread assumed for the Gram kernel: its tl.dot tiles take all ptxas allows at
8 warps (255, see ``python benchmarks/aot.py``), rounded up to the allocation unit."""
MAX_SPLIT = 16
MIN_SPLIT_STEPS = 16
"""A K split streams at least this many d-blocks, so the software pipeline has work to hide."""
MAX_WORKSPACE = 2**28
"""Bytes of partial Grams a split may allocate (split x B x n^2 float32)."""
EPILOGUE_STEPS = 2
"""Cost of writing or reading one fp32 output tile, in d-block steps (about the same bytes)."""


def blocks_per_sm(num_warps: int, shared: int, limits: DeviceLimits, registers: int) -> int:
    """Programs of one kernel resident on an SM at once (at least 1)."""
    threads = 32 * num_warps
    by_regs = limits.regs_per_sm // (registers * threads)
    by_smem = limits.smem_per_sm // max(shared, 1)
    by_threads = limits.threads_per_sm // threads
    return max(1, min(by_regs, by_smem, by_threads))


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


def k_split(d: int, split_k: int, block_k: int) -> tuple[int, int]:
    """(features per split, number of splits) of a Gram launch asking for ``split_k`` splits
    of d: each split a whole number of block_k steps, empty splits dropped."""
    k_per_split = cdiv(cdiv(d, split_k), block_k) * block_k
    return k_per_split, cdiv(d, k_per_split)


@dataclass(frozen=True)
class Waves:
    """How a Gram launch fills the device: programs, programs resident at once, waves."""

    programs: int
    slots: int
    waves: int
    cost: float

    @property
    def efficiency(self) -> float:
        """Share of the launched waves' program slots that do work."""
        return self.programs / (self.waves * self.slots)


def gram_waves(n: int, d: int, batch: int, cfg: dict, dtype: torch.dtype,
               limits: DeviceLimits) -> Waves:  # fmt: skip
    """The wave model of one Gram launch with launch parameters ``cfg`` (see the module doc)."""
    block, block_k, split = cfg["block"], cfg["block_k"], cfg["split_k"]
    tiles = cdiv(n, block) * (cdiv(n, block) + 1) // 2 * batch
    shared = gram_shared_bytes(block, block_k, dtype, cfg["num_stages"])
    slots = limits.sms * blocks_per_sm(cfg["num_warps"], shared, limits, GRAM_REGISTERS)
    steps = cdiv(cdiv(d, split), block_k)
    programs = tiles * split
    waves = cdiv(programs, slots)
    cost = waves * (steps + EPILOGUE_STEPS)
    if split > 1:  # _dist_tile_kernel reads the split partial tiles of each output tile
        cost += cdiv(tiles, slots) * EPILOGUE_STEPS * (split + 1)
    return Waves(programs, slots, waves, cost)


def gram_config(
    n: int, d: int, batch: int, dtype: torch.dtype, limits: DeviceLimits | None
) -> dict:
    """Default launch parameters of the Gram kernels for (batch, n, d) inputs of ``dtype`` on a
    device with ``limits`` (None: the interpreter, small blocks): the tile and d-block sizes by
    n and dtype, ``split_k`` by the wave model (fewest cost units; ties: fewer splits)."""
    if limits is None:
        return dict(block=16, block_k=32, split_k=1, num_warps=4, num_stages=1)
    cfg = dict(block=128 if n >= 512 else 64, block_k=32 if dtype == torch.float32 else 64,
               split_k=1, num_warps=8, num_stages=3)  # fmt: skip
    most = min(MAX_SPLIT, cdiv(d, cfg["block_k"]) // MIN_SPLIT_STEPS,
               MAX_WORKSPACE // max(1, 4 * batch * n * n))  # fmt: skip
    best = None
    for split in range(1, max(1, most) + 1):
        cost = gram_waves(n, d, batch, cfg | dict(split_k=split), dtype, limits).cost
        if best is None or cost < best[0]:
            best = (cost, split)
    cfg["split_k"] = best[1]
    return cfg


def strip(block: int) -> int:
    """Rows of a tile ``_dist_tile_kernel`` handles at a time (a whole 128 x 128 tile of fp32
    sums and 64-bit addresses spilled 3.5 KB per thread on sm_90)."""
    return min(block, 32)


def moments_config(limits: DeviceLimits | None) -> dict[str, int]:
    """Default launch parameters of the compare kernels (None: the interpreter)."""
    if limits is None:
        return dict(block_r=8, block_c=16, block=64, chunk=256)
    # Few rows per program and 512-element steps: ~110 live registers at 4 warps even when the
    # rows are not 16-byte aligned (16 x 128 tiles took 255 and spilled 2.8 KB on sm_90).
    return dict(block_r=2, block_c=256, block=512, chunk=16384)


# ------------------------------------------------------------------------------- launching


def device_guard(x: Tensor) -> contextlib.AbstractContextManager:
    """Make x's device current (a launch goes to the current device, not the tensor's)."""
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@contextlib.contextmanager
def launch_guard(x: Tensor) -> Iterator[None]:
    """Launch on x's device; a kernel that does not fit the device (shared memory, registers)
    raises a one-line L2BGError instead of Triton's resource error."""
    with device_guard(x):
        try:
            yield
        except Exception as exc:
            from triton.runtime.errors import OutOfResources  # loaded: a kernel just ran

            if not isinstance(exc, OutOfResources):
                raise
            raise L2BGError(f"l2bg kernel does not fit {x.device}: {exc}".splitlines()[0]) from None


def host_flags(*flags: Tensor) -> list[bool]:
    """Read boolean scalars back to the host in one transfer: the one host sync of a call."""
    return [bool(v) for v in torch.stack(flags).tolist()]
