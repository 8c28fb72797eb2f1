"""Networks: templates, the JointNet, its file format and read-only graph view, and the executor
(plan, native runner, CUDA graphs) that runs many task-nets in one forward pass."""

from l2bg.net import resnets as _resnets  # noqa: F401  (registers resnet26 and resnet18)
