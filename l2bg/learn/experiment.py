"""The experiment a grow sequence runs in, as one plain value: what the Bind-Grow-Step reads.

An :class:`Experiment` holds the task stream, the template, the training recipe, the seed, the
RSA settings, the device and the provider of independent nets (an
:class:`l2bg.learn.independent.IndependentCache`). The step (:mod:`l2bg.learn.step`) and the
plugins of the loop (:mod:`l2bg.learn.plugins`, such as the search's memo) receive it instead of
the :class:`l2bg.learn.learner.Learner`, so the lower modules never reach into the higher one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from l2bg.learn.independent import IndependentCache, IndependentNet
    from l2bg.learn.training import TrainConfig
    from l2bg.net.templates import Template

__all__ = ["Experiment"]


@dataclass(frozen=True, eq=False)
class Experiment:
    """Tasks (a tuple, stream order), template, training recipe, benchmark name, seed, device,
    the RSA sample count (None: min(500, |V_t|)) and backend, and the cache of independent nets.
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

    def independent(self, index: int, progress: Any = None) -> IndependentNet:
        """The independent net of stream task ``index`` (trained once per cache)."""
        return self.cache.get_or_train(self.benchmark, self.tasks[index], index, self.seed,
                                       self.template, self.config, self.device, progress)

    def names(self, order: Sequence[int]) -> list[str]:
        """The task names in learning ``order`` (stream indices)."""
        return [self.tasks[j].name for j in order]
