"""Settings declared once: typed option groups, from which the CLI flags, recipe keys and API keywords come.

An option group is a pydantic model (``OptionGroup``, or any pass config) whose fields are the settings:
type, default, bounds and description are written there and nowhere else. A field's ``Flag`` metadata
(``Annotated[float, Flag("ratio")]``) says how it is spelled outside: its API keyword, its command-line
flag and the recipe keys that follow from them. ``settings_of`` reads a group into ``Setting`` records;
``toolchain.cli_options`` turns those into Click options and ``toolchain.recipe`` into its schema.

Names: a group may have a ``prefix`` (``lowrank``): the field ``energy`` is then the keyword
``lowrank_energy`` and the flag ``--lowrank-energy``. A negated flag (``--no-verify``) sets its field
(``verify``, default True) to False; a pair (``--per-channel/--per-tensor``) sets a tri-state field.

Only pydantic and the standard library are imported here (the CLI builds its flags from this at start-up).
"""

from __future__ import annotations

import difflib
import reprlib
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from toolchain.errors import UsageError


@dataclass(frozen=True)
class Flag:
    """How one field is spelled outside its group (metadata of the field's annotation)."""

    name: str | None = None
    """The keyword after the group's prefix (default: the field's name)."""
    flag: str | None = None
    """The command-line spelling after the prefix, where it differs from the keyword (``--input`` for ``inputs``)."""
    negate: bool = False
    """The flag is ``--no-<flag>`` and turns the field (default True) off."""
    off: str | None = None
    """The opposite switch of a boolean pair (``per-tensor`` for ``--per-channel/--per-tensor``; ``no``: the
    flag with ``--no-`` in front)."""
    multiple: bool = False
    """Repeatable on the command line; a tuple of the values."""
    csv: bool = False
    """A tuple given as comma-separated text on the command line (``Gemm,MatMul``)."""
    pairs: bool = False
    """A dict given as repeatable ``KEY=VALUE`` items (``--lowrank-rank fc=8``)."""
    metavar: str | None = None
    help: str | None = None
    """The flag's help where it reads differently from the field's description (a negated flag's)."""
    cli: bool = True
    """False: an API keyword and recipe key only."""


@dataclass(frozen=True)
class Setting:
    """One field of a group as the outside sees it."""

    group: type[BaseModel]
    field: str
    keyword: str
    flag: str
    """The command-line flag (``--no-verify`` for a negated one)."""
    spec: Flag
    info: FieldInfo
    kind: str
    """bool, int, float, str, path, choice or any (a table or text the command parses itself)."""
    choices: tuple[str, ...] = ()

    @property
    def default(self) -> Any:
        return self.info.get_default(call_default_factory=True)

    @property
    def help(self) -> str:
        return self.spec.help or self.info.description or ""

    @property
    def off_flag(self) -> str | None:
        if self.spec.off == "no":
            return f"--no-{self.flag[2:]}"
        return _flag(self.group, self.spec.off) if self.spec.off else None

    @property
    def bounds(self) -> dict[str, float]:
        found: dict[str, float] = {}
        for item in self.info.metadata:
            for bound in ("ge", "gt", "le", "lt"):
                if getattr(item, bound, None) is not None:
                    found[bound] = getattr(item, bound)
        return found


class OptionGroup(BaseModel):
    """Base of option groups: typed, frozen, unknown keys rejected; every field is a setting."""

    model_config = ConfigDict(extra="forbid", frozen=True, protected_namespaces=())
    prefix: ClassVar[str] = ""
    every_field: ClassVar[bool] = True
    """False for configs where only fields carrying a ``Flag`` are settings (pass configs)."""


G = TypeVar("G", bound=BaseModel)


def settings_of(group: type[BaseModel]) -> list[Setting]:
    """The group's settings in declaration order (a pass config's: the fields that carry a ``Flag``)."""
    every = getattr(group, "every_field", False)
    found = []
    for name, info in group.model_fields.items():
        spec = next((m for m in info.metadata if isinstance(m, Flag)), None)
        if spec is None:
            if not every:
                continue
            spec = Flag()
        keyword = _joined(getattr(group, "prefix", ""), spec.name or name, "_")
        flag_name = _flag(group, spec.flag or spec.name or name)
        flag = f"--no-{flag_name[2:]}" if spec.negate else flag_name
        kind, choices = _kind(info.annotation, spec)
        found.append(Setting(group, name, keyword, flag, spec, info, kind, choices))
    return found


def keywords_of(*groups: type[BaseModel]) -> tuple[str, ...]:
    return tuple(s.keyword for group in groups for s in settings_of(group))


def from_keywords(group: type[G], keywords: dict[str, Any], **fixed: Any) -> G:
    """The group from API keywords (``lowrank_energy=0.9``), with values typed as on the command line
    (``"Gemm,MatMul"``, ``["fc=8"]``) turned into the field's type. ``fixed`` are field values set by the
    caller. Unknown keywords and bad values fail as one ``UsageError`` line naming the flag."""
    by_keyword = {s.keyword: s for s in settings_of(group)}
    unknown = sorted(k for k in keywords if k not in by_keyword)
    if unknown:
        raise unknown_option(unknown[0], by_keyword)
    values = dict(fixed)
    for keyword, value in keywords.items():
        setting = by_keyword[keyword]
        values[setting.field] = _from_outside(setting, value)
    return validated(group, values)


def to_keywords(group: BaseModel) -> dict[str, Any]:
    """The group's settings as API keywords (the inverse of ``from_keywords``)."""
    return {s.keyword: getattr(group, s.field) for s in settings_of(type(group))}


def validated(group: type[G], values: dict[str, Any]) -> G:
    """``group(**values)``, a pydantic error told as one line about the flag (``--max-drop must be ...``)."""
    try:
        return group(**values)
    except ValidationError as exc:
        by_field = {s.field: s for s in settings_of(group)}
        error = exc.errors()[0]
        location = error["loc"]
        setting = by_field.get(str(location[0])) if location else None
        subject = setting.flag if setting is not None else (".".join(map(str, location)) or group.__name__)
        if setting is not None and setting.spec.negate:
            subject = f"'{setting.keyword}'"
        bounds = setting.bounds if setting is not None else {}
        if error["type"].startswith(("greater_than", "less_than")) and {"ge", "le"} <= set(bounds):
            raise UsageError(f"{subject} {show(error.get('input'))} is outside the supported range "
                             f"{bounds['ge']:g}-{bounds['le']:g}") from exc
        raise UsageError(f"{subject} {phrase(error)}") from exc


def unknown_option(keyword: str, known: Any) -> UsageError:
    return UsageError(f"unknown option '{keyword}'{_nearest(keyword, known)}")


def _from_outside(setting: Setting, value: Any) -> Any:
    spec = setting.spec
    if spec.csv and isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    if spec.pairs and not isinstance(value, dict) and value is not None:
        pairs = {}
        for item in ([value] if isinstance(value, str) else value):
            key, sep, text = str(item).rpartition("=")
            if not sep or not key or not text.strip().isdigit():
                raise UsageError(f"{setting.flag} expects {spec.metavar or 'KEY=VALUE'}, got '{item}'")
            pairs[key] = int(text)
        return pairs
    if isinstance(value, list):
        return tuple(value)
    return value


def _joined(prefix: str, name: str, separator: str) -> str:
    name = name.replace("_", separator).replace("-", separator)
    return f"{prefix}{separator}{name}" if prefix else name


def _flag(group: type[BaseModel], name: str) -> str:
    return "--" + _joined(getattr(group, "prefix", ""), name, "-")


def _is_union(annotation: Any) -> bool:
    return typing.get_origin(annotation) in (typing.Union, types.UnionType)


def _kind(annotation: Any, spec: Flag) -> tuple[str, tuple[str, ...]]:
    """The command-line kind of a field's type (its item type for tuples)."""
    if _is_union(annotation):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = members[0] if len(members) == 1 else Any
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        return _kind(typing.get_args(annotation)[0], spec)
    if origin is tuple and (spec.multiple or spec.csv):
        kind, choices = _kind(typing.get_args(annotation)[0], Flag())
        return "str" if spec.csv else kind, choices
    if origin is Literal:
        return "choice", tuple(str(a) for a in typing.get_args(annotation))
    simple = {bool: "bool", int: "int", float: "float", str: "str", Path: "path"}
    return simple.get(annotation, "any"), ()


# ---- one line about a bad value -----------------------------------------------------------------

_REPR = reprlib.Repr()  # bounded output however big or deep the value (keyword arguments need 3.12)
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 2, 4, 4, 60, 60


def show(value: Any) -> str:
    """A value as the user wrote it, short: 'lots', true, 3, [1, 2, ...], a table."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, (str, int, float, list, tuple)):
        return _REPR.repr(list(value) if isinstance(value, tuple) else value)
    return _REPR.repr(str(value))[1:-1]  # dates and times as written: 2024-01-01


def phrase(error: Any) -> str:
    """What is wrong with a value (a pydantic error), as the end of a sentence that starts with its name."""
    import re

    kind, context = error["type"], error.get("ctx") or {}
    got = f", got {show(error.get('input'))}"
    if kind == "recipe":
        return str(context["message"])
    if kind == "literal_error":
        choices = re.findall(r"'([^']*)'", str(context.get("expected", "")))
        return f"must be one of {', '.join(choices)}{got}"
    bounds = {"greater_than_equal": ("at least", "ge"), "greater_than": ("greater than", "gt"),
              "less_than_equal": ("at most", "le"), "less_than": ("less than", "lt")}
    if kind in bounds:
        words, name = bounds[kind]
        return f"must be {words} {context[name]:g}{got}"
    phrases = {"bool_type": "must be true or false", "int_type": "must be a whole number",
               "int_from_float": "must be a whole number", "float_type": "must be a number",
               "finite_number": "must be a finite number", "string_type": "must be text",
               "list_type": "must be a list", "dict_type": "must be a table", "tuple_type": "must be a list"}
    if kind in phrases:
        return phrases[kind] + got
    if kind in ("string_too_short", "too_short"):
        return "must not be empty"
    message = str(error.get("msg", "is invalid"))
    return f"is invalid: {message[:1].lower()}{message[1:]}{got}"


# ---- API keywords -------------------------------------------------------------------------------------


def take(options: dict[str, Any], group: type[G], only: tuple[str, ...] | None = None, **fixed: Any) -> G:
    """Pop ``group``'s keywords (``only`` these) out of ``options`` and build the group from them."""
    names = only if only is not None else keywords_of(group)
    return from_keywords(group, {k: options.pop(k) for k in names if k in options}, **fixed)


def refuse_leftovers(options: dict[str, Any], known: Any, command: str) -> None:
    """Keywords no group took: one line naming the first, with the nearest known one."""
    if options:
        keyword = sorted(options)[0]
        raise UsageError(f"{command} got an unknown option '{keyword}'"
                         + _nearest(keyword, known))


def _nearest(keyword: str, known: Any) -> str:
    close = difflib.get_close_matches(keyword, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def with_keywords(function: Any, settings: list[Setting], extra: dict[str, Any] | None = None) -> Any:
    """``function`` (taking ``**options``) with a signature that lists every keyword it accepts, generated from
    the settings: ``help()``, IDEs and ``inspect.signature(...).bind`` see each one with its default."""
    import inspect

    original = inspect.signature(function)
    fixed = [p for p in original.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    taken = {p.name for p in fixed}
    generated = [inspect.Parameter(s.keyword, inspect.Parameter.KEYWORD_ONLY, default=s.default,
                                   annotation=s.info.annotation) for s in settings if s.keyword not in taken]
    generated += [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
                  for name, default in (extra or {}).items() if name not in taken]
    function.__signature__ = original.replace(parameters=fixed + generated)
    return function
