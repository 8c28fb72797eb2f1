"""The one map from the core's parameter names to the command line's flags.

The core (``l2bg.base`` … ``l2bg.search``) names parameters in its errors
(:class:`l2bg.base.errors.ParamError`: ``num_tasks must be >= 1``); the command line shows the
flag that sets each (``--tasks must be >= 1``) through :func:`message`.
"""

from __future__ import annotations

from l2bg.base.errors import ParamError

__all__ = ["FLAGS", "message"]

#: parameter name (of Settings, RunConfig, SearchConfig, build_benchmark, the RSA readers) -> flag
FLAGS: dict[str, str] = {
    # data (Settings, build_benchmark)
    "benchmark": "--benchmark",
    "template": "--template",
    "tasks": "--tasks",
    "num_tasks": "--tasks",
    "data_root": "--data-root",
    "angles": "--angles",
    "domains": "--domains",
    "max_per_class": "--max-per-class",
    "class_order_seed": "--class-order-seed",
    "seed": "--seed",
    # training, RSA, device, cache (Settings, TrainConfig)
    "epochs": "--epochs",
    "lr": "--lr",
    "batch_size": "--batch-size",
    "shared_lr_scale": "--shared-lr-scale",
    "rsa_samples": "--rsa-samples",
    "device": "--device",
    "cache_dir": "--cache-dir",
    # the run configuration (strategy, its conflict model, δ)
    "strategy": "--strategy",
    "grow_rule": "--grow-rule",
    "bind_rule": "--bind-rule",
    "similarity": "--similarity",
    "granularity": "--granularity",
    "grow_mode": "--grow-mode",
    "adapter_rank": "--adapter-rank",
    "task_bn": "--task-bn",
    "delta": "--delta",
    "deltas": "--deltas",
    "out": "--out",
    # the search (SearchConfig, SearchSpace, report)
    "trials": "--trials",
    "space": "--space",
    "sampler": "--sampler",
    "objective": "--objective",
    "startup_trials": "--startup-trials",
    "max_params": "--max-params",
    "bind_targets": "--bind-targets",
    "delta_set": "--delta-set",
    "initial": "--initial",
    "storage": "--storage",
    "study_name": "--study-name",
    "workers": "--workers",
    "threads": "--threads",
    "lease_s": "--lease-seconds",
    "search_rules": "--search-rules",
    "search_similarity": "--search-similarity",
    "search_granularity": "--search-granularity",
    "search_grow_mode": "--search-grow-mode",
    "report": "--report",
    # l2bg rsa (the comparison methods, the on-disk readers, minibatch CKA)
    "method": "--method",
    "layers": "--layers",
    "samples": "--samples",
    "sigma": "--sigma",
    "backend": "--backend",
}


def message(exc: BaseException) -> str:
    """An error's message as the command line shows it: parameters named by their flags."""
    if isinstance(exc, ParamError):
        return exc.render(FLAGS)
    return str(exc)
