"""Learning a task stream: records, configuration, plugins, the step, strategies, the learner."""
