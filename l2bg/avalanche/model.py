"""The JointNet as an Avalanche ``MultiTaskModule``: ``forward(x, task_labels)`` gives every
sample the logits of its task's task-net.

Each task label maps to one l2bg task (a task-net of the JointNet) and to the class ids of its
experience: the task-net's k outputs are written at those ids and every other id gets
``mask_value`` (as Avalanche's masked heads do), so class ids need not start at zero and a
padded column never wins the arg-max. Avalanche's own ``MultiTaskModule.forward`` pads with
zeros instead, which beats negative logits. A task label not learned yet gives ``mask_value``
everywhere: the model never grows while it is evaluated (:meth:`L2BGModel.adaptation`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from l2bg.avalanche import lazy_classes
from l2bg.base.errors import L2BGError
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import Template

__all__ = ["L2BGModel"]  # noqa: F822  (built on first use: lazy_classes)


def _build_model() -> type:
    from avalanche.models import MultiTaskModule

    class L2BGModel(MultiTaskModule):
        """A :class:`~l2bg.net.jointnet.JointNet` (``net``) under Avalanche's multi-task
        interface; :class:`l2bg.avalanche.L2BGStrategy` grows it."""

        def __init__(self, template: Template, mask_value: float = -1000.0) -> None:
            super().__init__()
            self.template = template
            self.net = JointNet(template)
            self.mask_value = float(mask_value)
            self.task_names: dict[int, str] = {}
            self.task_classes: dict[int, tuple[int, ...]] = {}

        @property
        def flat_inputs(self) -> bool:
            """The template takes flat vectors (an MLP): images are flattened on the way in."""
            shape = self.template.input_shape
            return shape is not None and len(shape) == 1

        def inputs(self, x: Tensor) -> Tensor:
            return x.flatten(1) if self.flat_inputs and x.dim() > 2 else x

        def adaptation(self, experience: Any) -> None:
            """Avalanche's adaptation: the largest class id (evaluation too) and, while training,
            the task labels seen. The JointNet is never changed here: it grows only inside
            :meth:`L2BGStrategy.train <l2bg.avalanche.L2BGStrategy>`, never at evaluation."""
            super().adaptation(experience)
            for classes in self.task_classes.values():
                self.max_class_label = max(self.max_class_label, max(classes) + 1)

        def learned(self, label: int, task: str, classes: tuple[int, ...], net: JointNet) -> None:
            """Record that task label ``label`` is l2bg task ``task`` of ``net`` (the grown
            JointNet) with the class ids ``classes``; only while training."""
            if not self.training:
                raise L2BGError(f"task label {label}: the model grows only while training; call "
                                "strategy.train(experience), not eval")
            if task not in net.tasks:
                raise L2BGError(f"task label {label}: task {task!r} is not in the JointNet")
            self.net = net
            self.task_names[int(label)] = task
            self.task_classes[int(label)] = tuple(int(c) for c in classes)
            self.known_train_tasks_labels = self.known_train_tasks_labels | {int(label)}
            self.max_class_label = max(self.max_class_label, max(classes) + 1)

        def _width(self) -> int:
            return max([self.max_class_label, *(max(c) + 1 for c in self.task_classes.values())])

        def place(self, z: Tensor, classes: Sequence[int], width: int | None = None) -> Tensor:
            """A task-net's logits ``z`` (n, k) at the class ids ``classes`` (k of them) of
            rows of ``width`` columns (default: the largest id seen or in ``classes``, plus
            one), ``mask_value`` elsewhere."""
            if width is None:
                width = max(self._width(), max(classes) + 1)
            out = torch.full((z.shape[0], width), self.mask_value, device=z.device,
                             dtype=z.dtype)
            out[:, list(classes)] = z
            return out

        def _logits(self, x: Tensor, label: int, width: int) -> Tensor:
            task = self.task_names.get(int(label))
            if task is not None and x.shape[0]:
                return self.place(self.net(self.inputs(x), task), self.task_classes[int(label)],
                                  width)
            return torch.full((x.shape[0], width), self.mask_value, device=x.device)

        def forward_single_task(self, x: Tensor, task_label: int) -> Tensor:
            return self._logits(x, task_label, self._width())

        def forward(self, x: Tensor, task_labels: Tensor | int | None) -> Any:
            """Logits (n, largest class id + 1) of each sample's task (``mask_value`` elsewhere);
            ``task_labels`` None: a dict of every learned task's logits."""
            if task_labels is None:
                return self.forward_all_tasks(x)
            if isinstance(task_labels, int):
                return self.forward_single_task(x, task_labels)
            width = self._width()
            out = torch.full((x.shape[0], width), self.mask_value, device=x.device)
            for label in torch.unique(task_labels).tolist():
                rows = task_labels == label
                z = self._logits(x[rows], label, width)
                out = out.to(z.dtype)
                out[rows] = z
            return out

    return L2BGModel


__getattr__ = lazy_classes(globals(), {"L2BGModel": _build_model})
