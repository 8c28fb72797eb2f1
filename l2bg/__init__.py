"""Learn to Bind and Grow: task-incremental learning by binding to similar task-nets and growing
only the layers where the tasks conflict."""

__version__ = "0.1.0"
