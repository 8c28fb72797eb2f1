"""Avalanche's training callbacks under :class:`~l2bg.avalanche.strategy.L2BGStrategy`.

l2bg's ``fit`` runs the training iterations, so the strategy passes :class:`TrainingCallbacks`,
an l2bg plugin, to its ``Learner``: its training extension points (:mod:`l2bg.learn.plugins`)
set the strategy's state and call Avalanche's callbacks in Avalanche's order, for every epoch
and iteration of every net the experience trains: its independent net (the only training of the
first experience, and of a task that binds nowhere) and its task-net inside the JointNet. Per
l2bg epoch: ``_before_training_epoch``; per mini-batch ``_before_training_iteration``,
``_before_forward``, ``_after_forward``, ``_before_backward``, ``_after_backward``,
``_before_update``, ``_after_update``, ``_after_training_iteration``; then
``_after_training_epoch``. So the clock counts l2bg's epochs and iterations (both phases).

The state, as Avalanche's metrics read it: ``mbatch`` is [x, y, task labels] (``mb_x`` the
inputs as the net sees them, flattened for an MLP; ``mb_y`` the experience's class ids);
``mb_output`` the task-net's logits placed at the experience's class ids, ``mask_value``
elsewhere (as :class:`~l2bg.avalanche.model.L2BGModel` gives them), detached; ``loss`` the
mini-batch's loss (from ``_before_backward`` on, detached); ``optimizer`` the one training
now. ``l2bg_phase`` says whose logits they are: ``"independent"`` (the task's independent net)
or ``"jointnet"``; ``l2bg_fit`` is l2bg's :class:`~l2bg.learn.plugins.FitState`; both are None
outside training. The callbacks observe: l2bg trains on its own loss, so what a plugin changes
there (the loss, the mini-batch, ``stop_training``) does not change the training. An
independent net found in the cache (``cache_dir``) is not trained and fires nothing.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from l2bg.learn.plugins import FitState, Plugin

__all__ = ["TrainingCallbacks"]


class TrainingCallbacks(Plugin):
    """Calls ``strategy``'s Avalanche training callbacks from l2bg's training extension points
    for the experience of task label ``label`` whose local class c is class id ``classes[c]``;
    ``model`` (the :class:`~l2bg.avalanche.model.L2BGModel` the experience grows) places the
    logits."""

    name = "avalanche-callbacks"

    def __init__(self, strategy: Any, model: Any, label: int, classes: Sequence[int]) -> None:
        self.strategy = strategy
        self.model = model
        self.label = int(label)
        self.classes = tuple(int(c) for c in classes)
        self._ids: torch.Tensor | None = None

    def before_training_epoch(self, state: FitState) -> None:
        s = self.strategy
        s.l2bg_phase, s.l2bg_fit, s.optimizer = state.phase, state, state.optimizer
        s._before_training_epoch()

    def before_training_iteration(self, state: FitState) -> None:
        s, y = self.strategy, state.y
        if self._ids is None or self._ids.device != y.device:
            self._ids = torch.tensor(self.classes, dtype=torch.long, device=y.device)
        s.mbatch = [state.x, self._ids[y], torch.full_like(y, self.label)]
        s.mb_output = None
        s.loss = s._make_empty_loss()
        s._before_training_iteration()
        s._before_forward()

    def after_forward(self, state: FitState) -> None:
        s = self.strategy
        s.mb_output = self.model.place(state.logits.detach(), self.classes)
        s._after_forward()
        s.loss = s.loss + state.loss.detach()
        s._before_backward()

    def after_backward(self, state: FitState) -> None:
        self.strategy._after_backward()
        self.strategy._before_update()

    def after_update(self, state: FitState) -> None:
        self.strategy._after_update()
        self.strategy._after_training_iteration()

    def after_training_epoch(self, state: FitState) -> None:
        self.strategy._after_training_epoch()

    def after_run(self, run: Any, result: Any) -> None:
        """The l2bg training state is dropped (the strategy pickles without it)."""
        self.strategy.l2bg_phase = self.strategy.l2bg_fit = None
