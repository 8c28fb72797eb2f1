"""Networks: templates, the JointNet, its file format and read-only graph view, and the executor
(plan, native runner, CUDA graphs) that runs many task-nets in one forward pass."""
