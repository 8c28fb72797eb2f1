"""Learn to Bind and Grow as an Avalanche strategy (``L2BGStrategy``), on any task-incremental
Avalanche benchmark.

For each new training experience (one task label, docs/design.md "Avalanche") the strategy
reads the experience's data into an l2bg :class:`~l2bg.data.Task` (when the experience's train
transforms draw at random, the task re-reads its training samples every time a mini-batch is
drawn, so every epoch sees new draws, as under Avalanche's own strategies:
:mod:`l2bg.avalanche.redraw`) and drives l2bg's one loop,
:meth:`l2bg.learn.learner.Learner.run`, over the tasks learned so far plus the new one: a plugin
restores every earlier task (its stored decision, scores and the grown JointNet), so only the
new task is learned: its independent net trained, conflicts scored, bound, the nucleus grown
and trained inside the JointNet. The model is an :class:`~l2bg.avalanche.model.L2BGModel`
(an Avalanche ``MultiTaskModule``); the optimiser is rebuilt after every growth; evaluation,
metrics, loggers and checkpoints are Avalanche's. l2bg's ``fit`` runs the iterations, and an l2bg
plugin (:class:`~l2bg.avalanche.hooks.TrainingCallbacks`) calls Avalanche's epoch and iteration
callbacks from it, in Avalanche's order, for the independent net's training and the JointNet's
(``strategy.l2bg_phase`` says which), so Avalanche's training metrics, loggers and clock see
every l2bg iteration.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from l2bg.avalanche import lazy_classes
from l2bg.avalanche.convert import (
    VALID_FRACTION,
    dataset_tensors,
    make_task,
    task_label_of,
)
from l2bg.avalanche.hooks import TrainingCallbacks
from l2bg.avalanche.redraw import DatasetRedraw, augment_mode, check_augment, seeded_rngs
from l2bg.base.errors import L2BGError, ParamError
from l2bg.data.splits import seeded_generator
from l2bg.learn.independent import IndependentCache, open_cache
from l2bg.learn.learner import Learner
from l2bg.learn.plugins import Plugin, Restored
from l2bg.learn.record import RunRecord, TaskRecord
from l2bg.learn.runconfig import RunConfig
from l2bg.learn.settings import Settings
from l2bg.learn.step import grow_steps
from l2bg.learn.training import DEFAULTS, TrainConfig, default_config, make_optimizer
from l2bg.net.jointnet import JointNet
from l2bg.net.templates import Template, convnet, mlp

__all__ = ["L2BGStrategy"]  # noqa: F822  (built on first use: lazy_classes)

#: the benchmark name the independent nets' cache keys carry
BENCHMARK = "avalanche"


class _Learned(Plugin):
    """Restores the tasks learned in earlier experiences (stored decision and record, the
    current JointNet) and serves their stored conflict scores, so the loop learns only the
    new one; keeps the scores it computes for the next experiences."""

    name = "avalanche-learned"

    def __init__(self, records: Sequence[TaskRecord], scores: dict[int, dict], net: JointNet,
                 num_tasks: int) -> None:
        self.records = [_padded(r, num_tasks) for r in records]
        self.scores = scores
        self.net = net

    def provide_scores(self, ctx: Any, candidates: Sequence[str], similarity: str,
                       compute: Callable[[], Any]) -> Any:
        stored = self.scores.setdefault(ctx.position, {})
        key = (tuple(candidates), similarity)
        if key not in stored:
            stored[key] = compute()
        return stored[key]

    def restore(self, prefix: Sequence[Any], decision: Any) -> Restored | None:
        pos = len(prefix)
        if pos >= len(self.records):
            return None
        record = self.records[pos]
        if record.decision != decision:
            raise L2BGError(f"task {decision.task}: the strategy now decides {decision.key} "
                            f"but decided {record.decision.key} when it learned it; a strategy "
                            "must decide the same way from the same scores")
        return Restored(record, lambda: self.net)


def _build_strategy() -> type:
    from avalanche.training.plugins.evaluation import default_evaluator
    from avalanche.training.templates import SupervisedTemplate

    from l2bg.avalanche.model import L2BGModel

    class L2BGStrategy(SupervisedTemplate):
        """Learn to Bind and Grow on a task-incremental Avalanche stream.

        ``strategy`` (an l2bg strategy name or object), ``delta`` or ``deltas`` (one per task
        after the first), ``grow_rule``, ``bind_rule`` and ``similarity`` are l2bg's, checked
        as ``l2bg run`` checks them (:class:`l2bg.learn.runconfig.RunConfig`; errors name the
        parameter). ``template``: an l2bg :class:`~l2bg.net.templates.Template`, ``"mlp"``
        (per-task heads) or ``"convnet"``, or None (mlp for flat inputs, convnet for square
        images), sized by the first experience. ``train``: the training recipe (default: the
        template's, with ``epochs``, ``lr``, ``batch_size``, ``shared_lr_scale`` as overrides).
        ``valid_stream``: the experiences (matched by task label) whose data validates each task
        (the conflict scores' inputs); without it a seeded ``valid_fraction`` of the training
        data. ``cache_dir``: keep the independent nets on disk there (default: in memory, dropped
        after each experience). ``augment``: how the training data's train transforms are drawn:
        "per-epoch" re-reads every sample each time a mini-batch is drawn (new random draws every
        epoch, as Avalanche's strategies), "once" reads the data once (every epoch sees the same
        draws), "auto" (default) re-reads when reading twice differs (the transforms draw at
        random), else reads once; ``record.config["augment"]`` says what each task did. The rest
        is Avalanche's (``device``, ``plugins``, ``evaluator``,
        ``eval_every``, ``eval_mb_size``); Avalanche's training callbacks fire for every l2bg
        epoch and iteration (:mod:`l2bg.avalanche.hooks`). A periodic evaluation inside an
        experience (``eval_every`` > 0 by epoch or iteration) is refused: the experience's task
        joins the model only once it is learned."""

        def __init__(self, *, template: Template | str | None = None, strategy: Any = "l2bg",
                     delta: float | None = None, deltas: Sequence[float] | None = None,
                     grow_rule: str | None = None, bind_rule: str | None = None,
                     similarity: str | None = None, train: TrainConfig | None = None,
                     epochs: int | None = None, lr: float | None = None,
                     batch_size: int | None = None, shared_lr_scale: float | None = None,
                     seed: int = 0, rsa_samples: int | None = None, rsa_backend: str = "auto",
                     valid_stream: Any = None, valid_fraction: float = VALID_FRACTION,
                     cache_dir: str | None = None, device: str | torch.device = "cpu",
                     eval_mb_size: int = 1024, plugins: Sequence[Any] | None = None,
                     evaluator: Any = default_evaluator, eval_every: int = -1,
                     l2bg_plugins: Sequence[Plugin] = (), augment: str = "auto",
                     **kwargs: Any) -> None:
            settings = Settings(benchmark=BENCHMARK, seed=seed, epochs=epochs, lr=lr,
                                batch_size=batch_size, shared_lr_scale=shared_lr_scale,
                                rsa_samples=rsa_samples, device=str(device), cache_dir=cache_dir,
                                grow_rule=grow_rule, bind_rule=bind_rule, similarity=similarity)
            self.run_config = RunConfig(settings, strategy, delta,
                                        None if deltas is None else list(deltas))
            self.l2bg_strategy = self.run_config.check(benchmark=False)
            if not (isinstance(valid_fraction, float | int) and 0 < valid_fraction < 1
                    and math.isfinite(valid_fraction)):
                raise ParamError(f"{{valid_fraction}} must be in (0, 1), got {valid_fraction!r}",
                                 "valid_fraction")
            if eval_every > 0 and kwargs.get("peval_mode", "epoch") != "experience":
                raise ParamError(f"{{eval_every}} {eval_every} evaluates inside an experience, "
                                 "before L2BGStrategy adds its task to the model; use "
                                 "{eval_every} 0 (after each experience) or -1", "eval_every")
            if template is not None and not isinstance(template, Template) and template not in (
                    "mlp", "convnet"):
                raise ParamError(f"{{template}} must be an l2bg Template, 'mlp', 'convnet' or "
                                 f"None, got {template!r}", "template")
            self.template_spec = template
            self.augment = check_augment(augment)
            self.train_given = train
            self.seed = seed
            self.rsa_samples = rsa_samples
            self.rsa_backend = rsa_backend
            self.valid_stream = valid_stream
            self.valid_fraction = float(valid_fraction)
            self.cache_dir = cache_dir
            self.l2bg_plugins = list(l2bg_plugins)
            model = (L2BGModel(template) if isinstance(template, Template) else _Unsized())
            config = self._config(template if isinstance(template, Template) else None)
            super().__init__(model=model, optimizer=None, train_mb_size=config.batch_size,
                             train_epochs=config.epochs, eval_mb_size=eval_mb_size, device=device,
                             plugins=plugins, evaluator=evaluator, eval_every=eval_every, **kwargs)
            #: the l2bg tasks learned so far (validation and test data; training data dropped)
            self.l2bg_tasks: list[Any] = []
            #: their task records, and the conflict scores computed for each position
            self.l2bg_records: list[TaskRecord] = []
            self.l2bg_scores: dict[int, dict] = {}
            #: how each task's training data was read: "per-epoch" or "once" (see ``augment``)
            self.l2bg_reads: dict[str, str] = {}
            #: the run record after the last experience (results.json's; ``config`` holds
            #: ``augment``: the option and each task's reads)
            self.record: RunRecord | None = None
            #: while l2bg trains: "independent" or "jointnet", and l2bg's FitState (see hooks)
            self.l2bg_phase: str | None = None
            self.l2bg_fit: Any = None

        # ------------------------------------------------------------------ set-up
        def _config(self, template: Template | None) -> TrainConfig:
            """The training recipe: ``train`` (or the template's defaults) with the overrides."""
            s = self.run_config.settings
            overrides = {"epochs": s.epochs, "lr": s.lr, "batch_size": s.batch_size,
                         "shared_lr_scale": s.shared_lr_scale, "seed": s.seed}
            if self.train_given is not None:
                return self.train_given.replace(**overrides)
            name = template.name if template is not None and template.name in DEFAULTS else "mlp"
            return default_config(name, **overrides)

        def _template(self, shape: tuple[int, ...]) -> Template:
            """The template of the first experience's inputs (``template`` as given, sized)."""
            spec = self.template_spec
            if isinstance(spec, Template):
                return spec
            if spec == "mlp" or (spec is None and len(shape) != 3):
                return mlp(input_dim=math.prod(shape), shared_head=False)
            if len(shape) != 3 or shape[1] != shape[2]:
                raise ParamError(f"{{template}} convnet needs square (C, H, W) images, got "
                                 f"{shape}; give an l2bg Template", "template")
            return convnet(in_channels=shape[0], image_size=shape[1])

        def _grow_steps(self, num_tasks: int) -> list[Any]:
            deltas = self.run_config.deltas
            if deltas is not None and num_tasks - 1 > len(deltas):
                raise ParamError(f"{{deltas}} has {len(deltas)} values, for {len(deltas) + 1} "
                                 f"tasks; experience {num_tasks} needs one more", "deltas")
            return grow_steps(num_tasks, self.run_config.delta,
                              None if deltas is None else deltas[:num_tasks - 1])

        def _cache(self) -> IndependentCache:
            return open_cache(False) if self.cache_dir is None else open_cache(None, self.cache_dir)

        def __getstate__(self) -> dict[str, Any]:
            """Pickled (Avalanche's checkpoints) without the optimiser, which is rebuilt from the
            JointNet when loaded: it holds no state between experiences (l2bg's ``fit`` starts
            every task with a fresh one), and dill cannot pickle torch 2.14's optimiser classes."""
            state = dict(self.__dict__)
            state["optimizer"] = None
            return state

        def __setstate__(self, state: dict[str, Any]) -> None:
            self.__dict__.update(state)
            self.make_optimizer()

        # ------------------------------------------------------------------ Avalanche's hooks
        def check_model_and_optimizer(self, **kwargs: Any) -> None:
            """Avalanche's model adaptation (it never grows the JointNet); the optimiser is rebuilt
            after the experience is learned (:meth:`make_optimizer`)."""
            if isinstance(self.model, L2BGModel):
                self.model = self.model_adaptation()

        def make_optimizer(self, **kwargs: Any) -> None:
            """The optimiser rebuilt after growth: l2bg's recipe over the newest task's parameter
            groups (its own nodes at lr, the nodes it is bound to at lr · shared_lr_scale)."""
            net = self.model.net if isinstance(self.model, L2BGModel) else None
            if net is None or not net.tasks:
                self.optimizer = None
                return
            config = self._config(net.template)
            groups = net.param_groups(net.tasks[-1], config.lr, config.shared_lr_scale)
            self.optimizer = make_optimizer(groups, config) if groups else None

        def _train_exp(self, experience: Any, eval_streams: Any = None, **kwargs: Any) -> None:
            """Learn the experience's task with l2bg (see the module); only while training."""
            if not self.is_training:
                raise L2BGError("L2BGStrategy grows only while training; call train(experience)")
            self.learn_experience(experience)

        def learn_experience(self, experience: Any) -> RunRecord:
            """Bind, grow and train the JointNet for ``experience`` (a new task label)."""
            label = task_label_of(experience)
            model = self.model if isinstance(self.model, L2BGModel) else None
            if model is not None and label in model.task_names:
                raise L2BGError(f"task label {label} was learned already (as "
                                f"{model.task_names[label]}); L2BGStrategy learns each task once: "
                                "give every experience its own task label")
            name = f"task{label}"
            dataset = self.adapted_dataset if self.adapted_dataset is not None else (
                experience.dataset.train())
            what = f"task {name} (train)"
            reads = augment_mode(self.augment, dataset, what)
            if reads == "once":
                x, y = dataset_tensors(dataset, what)
            else:  # the first read (validation part, shapes) drawn from l2bg's seed too
                seed = int(torch.randint(2**62, (1,),
                                         generator=seeded_generator(self.seed, f"read-{name}")))
                with seeded_rngs(seed):
                    x, y = dataset_tensors(dataset, what)
            if model is None:
                model = L2BGModel(self._template(tuple(x.shape[1:])))
                model.max_class_label = getattr(self.model, "max_class_label", 0)
                model.train()
            x = model.inputs(x)
            valid = self._valid(label, name, model)
            inputs = model.inputs
            redraw = None if reads == "once" else (
                lambda items: DatasetRedraw(dataset, items, inputs, what))
            task = make_task(name, (x, y), valid, None, seed=self.seed,
                             valid_fraction=self.valid_fraction, train_transform_of=redraw)
            tasks = [*self.l2bg_tasks, task]
            learned = _Learned(self.l2bg_records, self.l2bg_scores, model.net, len(tasks))
            callbacks = TrainingCallbacks(self, model, label, task.classes)
            learner = Learner(tasks, model.template, self._config(model.template),
                              benchmark=BENCHMARK, seed=self.seed, device=self.device,
                              cache=self._cache(), rsa_samples=self.rsa_samples,
                              rsa_backend=self.rsa_backend, quiet=True,
                              plugins=[learned, callbacks, *self.l2bg_plugins])
            result = learner.run(self.l2bg_strategy, sequence=self._grow_steps(len(tasks)))
            model.learned(label, name, task.classes, result.net.to(self.device))
            self.model = model.to(self.device)
            self.l2bg_records = list(result.records)
            self.l2bg_tasks = [*self.l2bg_tasks, _spent(task)]
            self.l2bg_reads = {**self.l2bg_reads, name: reads}
            self.record = dataclasses.replace(result.record, config={
                "augment": {"option": self.augment, "reads": dict(self.l2bg_reads)}})
            self.make_optimizer()
            return result.record

        def _valid(self, label: int, name: str, model: L2BGModel) -> Any:
            """(x, y) of the valid_stream's experience of ``label``, or None."""
            if self.valid_stream is None:
                return None
            for exp in self.valid_stream:
                if task_label_of(exp) == label:
                    x, y = dataset_tensors(exp.dataset.eval(), f"task {name} (valid)")
                    return model.inputs(x), y
            raise L2BGError(f"valid_stream has no experience of task label {label}; give one per "
                            "task, or leave valid_stream out to validate on part of the training "
                            "data")

    return L2BGStrategy


__getattr__ = lazy_classes(globals(), {"L2BGStrategy": _build_strategy})


class _Unsized(torch.nn.Module):
    """Placeholder model before the first experience sizes the template (no parameters)."""

    def __init__(self) -> None:
        super().__init__()
        self.max_class_label = 0

    def forward(self, x: Any, task_labels: Any = None) -> Any:
        raise L2BGError("L2BGStrategy has learned no experience yet; train it first")


def _padded(record: TaskRecord, num_tasks: int) -> TaskRecord:
    """A task record learned in a shorter stream, its rows padded (None) to ``num_tasks``."""
    pad = [None] * (num_tasks - len(record.val_row))
    return dataclasses.replace(record, val_row=[*record.val_row, *pad],
                               test_row=[*record.test_row, *pad])


def _spent(task: Any) -> Any:
    """A learned task without its training data and train transform (only its validation and
    test rows are read again, for the accuracy matrix), so the strategy and its checkpoints stay
    small and hold no data set."""
    return dataclasses.replace(task, x_train=task.x_train[:1], y_train=task.y_train[:1],
                               train_transform=None)
