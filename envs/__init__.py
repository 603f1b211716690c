"""Environments: the task registry, its wrappers and the tasks themselves."""

from envs.registry import (
    MissingDependencyError,
    TaskInfo,
    UnknownTaskError,
    VideoUnsupportedError,
    known_tasks,
    make_env,
    make_task_env,
    max_return,
    task_defaults,
)

__all__ = [
    "MissingDependencyError",
    "TaskInfo",
    "UnknownTaskError",
    "VideoUnsupportedError",
    "known_tasks",
    "make_env",
    "make_task_env",
    "max_return",
    "task_defaults",
]
