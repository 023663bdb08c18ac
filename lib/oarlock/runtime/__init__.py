"""Running functions: executor, context, work pool, the worker's settlement loop, local mode."""
