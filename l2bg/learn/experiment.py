"""The experiment a grow sequence runs in, as one plain value: what the Bind-Grow-Step reads.

An :class:`Experiment` holds the task stream, the template, the training recipe, the seed, the
RSA settings, the device, the provider of independent nets (an
:class:`l2bg.learn.independent.IndependentCache`) and the loop's plugins, whose training
extension points see every net trained in it. The step (:mod:`l2bg.learn.step`) and the
plugins of the loop (:mod:`l2bg.learn.plugins`, such as the search's memo) receive it instead of
the :class:`l2bg.learn.learner.Learner`, so the lower modules never reach into the higher one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any

from l2bg.base.errors import ParamError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from l2bg.learn.independent import IndependentCache, IndependentNet
    from l2bg.learn.plugins import Plugin
    from l2bg.learn.training import TrainConfig
    from l2bg.net.templates import Template

__all__ = ["GROW_MODES", "Experiment", "check_growth"]

#: how a grown unit is given to the new task: its own copy, or an adapter on the shared node
GROW_MODES = ("copy", "adapt")
DEFAULT_ADAPTER_RANK = 8


def check_growth(grow_mode: str = "copy", adapter_rank: int = DEFAULT_ADAPTER_RANK,
                 task_bn: bool = False) -> None:
    """The growth options of a run, one line naming the parameter at fault: ``grow_mode`` one of
    :data:`GROW_MODES`, ``adapter_rank`` an integer >= 1, ``task_bn`` a bool."""
    if grow_mode not in GROW_MODES:
        raise ParamError(f"{{grow_mode}} {grow_mode!r} is not one of {', '.join(GROW_MODES)}",
                         "grow_mode")
    if isinstance(adapter_rank, bool) or not isinstance(adapter_rank, int) or adapter_rank < 1:
        raise ParamError(f"{{adapter_rank}} must be an integer >= 1, got {adapter_rank!r}",
                         "adapter_rank")
    if not isinstance(task_bn, bool):
        raise ParamError(f"{{task_bn}} must be true or false, got {task_bn!r}", "task_bn")


@dataclass(frozen=True, eq=False)
class Experiment:
    """Tasks (a tuple, stream order), template, training recipe, benchmark name, seed, device,
    the RSA sample count (None: min(500, |V_t|)) and backend, the cache of independent nets, and
    the growth options (:func:`check_growth`): the grow mode of every step that names none, the
    adapters' rank, and task-specific batch norm; ``plugins``: the loop's, whose training
    extension points see every net trained here (:mod:`l2bg.learn.plugins`).
    Compared by identity: two experiments are the same run set-up only when they are one
    object (tasks are tensors)."""

    tasks: tuple[Any, ...]
    template: Template
    config: TrainConfig
    benchmark: str
    seed: int
    device: torch.device
    cache: IndependentCache
    rsa_samples: int | None = None
    rsa_backend: str = "auto"
    grow_mode: str = "copy"
    adapter_rank: int = DEFAULT_ADAPTER_RANK
    task_bn: bool = False
    plugins: Sequence[Plugin] = ()

    def __post_init__(self) -> None:
        check_growth(self.grow_mode, self.adapter_rank, self.task_bn)

    def growth_options(self) -> dict[str, Any]:
        """The growth options that differ from the defaults (what a memo's context adds, so
        that a memo of default runs keeps its key)."""
        defaults = {"grow_mode": "copy", "adapter_rank": DEFAULT_ADAPTER_RANK, "task_bn": False}
        return {k: getattr(self, k) for k, v in defaults.items() if getattr(self, k) != v}

    @cached_property
    def unit_channels(self) -> tuple[int | None, ...]:
        """C of every template slot's main layer, None where the slot cannot be cut nor take an
        adapter (:meth:`l2bg.net.jointnet.JointNet.unit_channels` of the template: slots built on
        the meta device, once per experiment)."""
        from l2bg.net.jointnet import JointNet

        channels = JointNet(self.template).unit_channels
        return tuple(channels(s) for s in range(len(self.template.slots)))

    def grown_by_copy(self, slots: Sequence[int], mode: str) -> tuple[int, ...]:
        """The whole ``slots`` that grow by copy under grow ``mode``'s ``adapt`` because no
        adapter fits them (:attr:`unit_channels` None, such as a pooling slot), sorted; () in
        mode ``copy``."""
        if mode != "adapt":
            return ()
        return tuple(sorted(s for s in set(slots) if self.unit_channels[s] is None))

    def independent(self, index: int, progress: Any = None, *,
                    plugins: Sequence[Plugin] | None = None) -> IndependentNet:
        """The independent net of stream task ``index`` (trained once per cache; its training
        seen by ``plugins``' training extension points, default the experiment's)."""
        return self.cache.get_or_train(self.benchmark, self.tasks[index], index, self.seed,
                                       self.template, self.config, self.device, progress,
                                       self.plugins if plugins is None else plugins)

    def names(self, order: Sequence[int]) -> list[str]:
        """The task names in learning ``order`` (stream indices)."""
        return [self.tasks[j].name for j in order]
