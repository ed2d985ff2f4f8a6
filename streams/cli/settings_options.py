"""One way for every command to take its settings: the settings class's fields become options.

A stage's settings are stated once, as fields of its pydantic settings class (default,
description, environment variable). ``settings_options`` turns the fields a command exposes into
typer options whose help text is the field's description, its environment variable and its
default, all read from the field. When the command runs, the options the operator gave override
the environment: the command receives one settings object built by the class itself, so the
class's validation (ranges, cross-field rules) applies to flags and variables alike.

An option the operator left out is ``None`` and not passed to the class, so the environment (or
the field's default) decides; that is why the generated options default to ``None`` and say the
real default in their help.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, TypeVar

import typer
from pydantic import AliasChoices, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings
from tier3.streams.kafka.errors import UsageError

S = TypeVar("S", bound=BaseSettings)
R = TypeVar("R")


class SettingsError(UsageError):
    """A setting (from a flag or the environment) the settings class refused; says which."""


def env_name(cls: type[BaseSettings], name: str) -> str:
    """The environment variable a settings field is read from (its first alias, or prefix+name)."""
    field = cls.model_fields[name]
    alias = field.validation_alias
    if isinstance(alias, AliasChoices):
        return str(alias.choices[0]).upper()
    if isinstance(alias, str):
        return alias.upper()
    return f"{cls.model_config.get('env_prefix', '')}{name}".upper()


def _help(cls: type[BaseSettings], name: str, field: FieldInfo) -> str:
    description = (field.description or name.replace("_", " ")).rstrip(".")
    default = field.get_default(call_default_factory=True)
    shown = "unset" if default is None else default
    return f"{description} (env {env_name(cls, name)}; default {shown})."


def load(cls: type[S], overrides: Mapping[str, Any] | None = None) -> S:
    """``cls`` from the environment with ``overrides`` on top; a refusal names the setting."""
    try:
        return cls(**dict(overrides or {}))
    except ValidationError as exc:
        problems = []
        for error in exc.errors():
            where = error["loc"][0] if error["loc"] else None
            if isinstance(where, str) and where in cls.model_fields:
                problems.append(f"{env_name(cls, where)}: {error['msg']}")
            else:
                problems.append(str(error["msg"]).removeprefix("Value error, "))
        raise SettingsError("bad setting: " + "; ".join(problems)) from None


def settings_options(
    cls: type[S],
    fields: Iterable[str],
    flags: Mapping[str, str] | None = None,
    param: str = "settings",
) -> Callable[[Callable[..., R]], Callable[..., R]]:
    """Decorate a typer command whose ``param`` parameter takes a ``cls`` instance.

    Each of ``fields`` becomes an option (``--field-name``, or the name ``flags`` gives it); the
    command is called with ``cls`` loaded from the environment plus the options given.
    """
    names = list(fields)
    flags = dict(flags or {})
    unknown = [n for n in [*names, *flags] if n not in cls.model_fields]
    if unknown:
        raise TypeError(f"{cls.__name__} has no field(s) {unknown}")

    def decorate(command: Callable[..., R]) -> Callable[..., R]:
        signature = inspect.signature(command, eval_str=True)
        own = [
            p.replace(kind=inspect.Parameter.KEYWORD_ONLY)
            for p in signature.parameters.values()
            if p.name != param
        ]
        taken = {p.name for p in own}
        clash = taken & set(names)
        if clash:
            raise TypeError(f"{command.__name__} already has parameter(s) {sorted(clash)}")
        generated = []
        for name in names:
            field = cls.model_fields[name]
            option = typer.Option(
                _flag(name, flags.get(name), field),
                help=_help(cls, name, field),
                show_default=False,
            )
            annotation = field.annotation if _accepts_none(field) else field.annotation | None
            generated.append(
                inspect.Parameter(
                    name,
                    inspect.Parameter.KEYWORD_ONLY,
                    default=None,
                    annotation=Annotated[annotation, option],
                )
            )

        @functools.wraps(command)
        def run(**kwargs: Any) -> R:
            given = {n: kwargs.pop(n) for n in names}
            settings = load(cls, {n: v for n, v in given.items() if v is not None})
            return command(**kwargs, **{param: settings})

        parameters = own + generated
        run.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in parameters}
        return run

    return decorate


def _flag(name: str, given: str | None, field: FieldInfo) -> str:
    """The option's name; a yes/no field gets both ``--x`` and ``--no-x``, so either can win."""
    flag = given or "--" + name.replace("_", "-")
    is_bool = field.annotation is bool or set(getattr(field.annotation, "__args__", ())) == {
        bool,
        type(None),
    }
    return f"{flag}/--no-{flag.removeprefix('--')}" if is_bool and "/" not in flag else flag


def _accepts_none(field: FieldInfo) -> bool:
    args = getattr(field.annotation, "__args__", ())
    return type(None) in args
