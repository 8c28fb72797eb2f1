"""Learn to Bind and Grow: task-incremental learning by binding to similar task-nets and growing
only the layers where the tasks conflict."""

__version__ = "0.1.0"


def backends() -> dict:
    """Which fast paths are active here (native executor, Triton) and why; loads them lazily."""
    from l2bg._ext import backends as _backends

    return _backends()
