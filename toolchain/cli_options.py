"""Click options generated from option groups (``toolchain.options``): no flag is declared by hand twice.

A command built with ``GeneratedCommand`` gets its generated flags the first time Click asks for its
parameters (parsing, --help, completion), so ``edgekiln --help`` imports neither pydantic nor a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click

Factory = Callable[[], list[click.Parameter]]


class GeneratedCommand(click.Command):
    """A command whose ``params`` are its hand-written ones followed by those ``flags()`` generates."""

    def __init__(self, *args: Any, flags: Factory | None = None, **kwargs: Any) -> None:
        self._flags = flags
        super().__init__(*args, **kwargs)

    @property  # type: ignore[override]
    def params(self) -> list[click.Parameter]:
        if self._flags is not None:
            factory, self._flags = self._flags, None
            self._params.extend(factory())
        return self._params

    @params.setter
    def params(self, value: list[click.Parameter]) -> None:
        self._params = value


def options_for(groups: Iterable[type], *, only: Iterable[str] | None = None, skip: Iterable[str] = (),
                required: Iterable[str] = (), help: dict[str, str] | None = None) -> list[click.Parameter]:
    """Click options for the settings of ``groups`` (by keyword: ``only`` these, not ``skip``)."""
    from toolchain.options import settings_of

    chosen = set(only) if only is not None else None
    skipped, needed, wording = set(skip), set(required), help or {}
    return [option_for(s, required=s.keyword in needed, help=wording.get(s.keyword))
            for group in groups for s in settings_of(group)
            if s.spec.cli and (chosen is None or s.keyword in chosen) and s.keyword not in skipped]


def option_for(setting: Any, *, required: bool = False, help: str | None = None) -> click.Option:
    """One setting as a Click option whose parameter name is its API keyword."""
    spec, text = setting.spec, help or setting.help
    if setting.kind == "bool" and not spec.multiple:
        if setting.off_flag:
            return click.Option([f"{setting.flag}/{setting.off_flag}", setting.keyword], default=None, help=text)
        if spec.negate:
            return click.Option([setting.flag, setting.keyword], is_flag=True, flag_value=False, default=True,
                                help=text)
        return click.Option([setting.flag, setting.keyword], is_flag=True, default=False, help=text)
    default = setting.default
    if spec.csv:
        default = ",".join(default)
    elif spec.multiple or spec.pairs:
        default = None
    shown = default is not None and default is not False and not spec.multiple and not spec.pairs
    # No default at all rather than default=None: Click 8.3 counts an explicit None as a value given.
    extra = {"default": default} if default is not None else {}
    return click.Option([setting.flag, setting.keyword], type=_click_type(setting), multiple=spec.multiple or spec.pairs,
                        required=required, metavar=spec.metavar, show_default=shown, help=text, **extra)


def _click_type(setting: Any) -> Any:
    if setting.spec.csv or setting.spec.pairs:
        return str
    if setting.kind == "choice":
        return click.Choice(list(setting.choices))
    return {"int": int, "float": float, "path": click.Path(path_type=Path)}.get(setting.kind, str)
