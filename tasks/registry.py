"""Which task this deployment runs: one setting, ``TIER3_TASK``, read the same way by every stage.

``TIER3_TASK`` names the task in one of two ways:

- **a registered name**: an entry point in the ``tier3.tasks`` group of any installed
  distribution (a team's package declares ``[project.entry-points."tier3.tasks"] triage =
  "acme_triage.task:task"``). ``widgets``, the built-in task, is registered by tier3 itself and is
  the default.
- **a dotted path** ``package.module:attr``, for a module on the path that is not packaged.

The object found is a ``Task`` or a callable without arguments that returns one (a factory, so a
task can read its own settings when it is loaded). Anything else, or a name that resolves to
nothing, is a ``TaskNotFound`` that names the setting and what it could have been, at start-up
rather than in the middle of a capture. See ``docs/tasks.md``.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict
from tier3.tasks.contract import Task

ENTRY_POINT_GROUP = "tier3.tasks"
SETTING = "TIER3_TASK"
DEFAULT_TASK = "widgets"
# Found even where the package's metadata is stale (an editable install not re-run).
BUILTIN = {"widgets": "tier3.tasks.widgets:task"}


class TaskNotFound(LookupError):
    """The configured task cannot be loaded; the message says which setting to change."""


class TaskSettings(BaseSettings):
    """The task every stage runs (env ``TIER3_TASK``)."""

    model_config = SettingsConfigDict(env_prefix="TIER3_", env_file=".env", extra="ignore")

    task: str = Field(
        DEFAULT_TASK,
        description="The task: a name registered in the 'tier3.tasks' entry point group, or a "
        "dotted path 'package.module:attr' to a Task or to a function returning one.",
    )


def registered() -> dict[str, str]:
    """Every task name that can be loaded, with the object path it stands for."""
    found = dict(BUILTIN)
    found.update({ep.name: ep.value for ep in entry_points(group=ENTRY_POINT_GROUP)})
    return found


def load_task(spec: str) -> Task:
    """The task ``spec`` names: a registered name or ``module:attr``."""
    spec = spec.strip()
    if ":" in spec:
        return _resolve(spec, spec)
    names = registered()
    if spec not in names:
        raise TaskNotFound(
            f"{SETTING}={spec!r}: no task is registered under that name (registered: "
            f"{', '.join(sorted(names))}). Register one in the {ENTRY_POINT_GROUP!r} entry point "
            "group, or set a dotted path 'package.module:attr'."
        )
    return _resolve(names[spec], spec)


def configured_task() -> Task:
    """The task the environment configures (``TIER3_TASK``, default: widgets)."""
    return load_task(TaskSettings().task)


def _resolve(path: str, spec: str) -> Task:
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise TaskNotFound(f"{SETTING}={spec!r}: a dotted path is 'package.module:attr'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise TaskNotFound(
            f"{SETTING}={spec!r}: cannot import module {module_name!r} ({exc})"
        ) from exc
    target: object = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise TaskNotFound(f"{SETTING}={spec!r}: module {module_name!r} has no {attr!r}")
        target = getattr(target, part)
    if not isinstance(target, Task) and callable(target):
        try:
            target = target()
        except Exception as exc:  # a factory's own failure (its settings, say), named as such
            raise TaskNotFound(
                f"{SETTING}={spec!r}: {path}() failed: {type(exc).__name__}: {exc}"
            ) from exc
    if not isinstance(target, Task):
        raise TaskNotFound(
            f"{SETTING}={spec!r}: {path} is a {type(target).__name__}, not a tier3 Task "
            "(tier3.tasks.contract.Task) or a function returning one"
        )
    return target
