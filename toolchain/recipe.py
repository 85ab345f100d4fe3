"""Recipe files for ``edgekiln build -c recipe.yaml`` (YAML or TOML).

A recipe is a flat mapping of ``edgekiln build``'s long option names (``calib-size`` or
``calib_size``) plus ``source``, ``output`` and ``targets``. ``load_recipe`` returns the values
keyed by ``toolchain.api.build``'s keyword names, type-checked, with relative paths resolved
against the recipe's folder (so a recipe works from any working directory).

Every problem is one ``UsageError`` line that names the file, the line and the key, the way a
compiler would: ``recipe.yaml:7: unknown key 'calib_sise' (did you mean 'calib-size'?)``.
PyYAML is imported only when a YAML recipe is read, to keep the CLI's start-up light.
"""

from __future__ import annotations

import difflib
import json
import os
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from toolchain.errors import MissingDependencyError, UsageError
from toolchain.options import phrase as _phrase
from toolchain.options import show as _show
from toolchain.targets import PRECISIONS

MAX_RECIPE_BYTES = 1 << 20
"""Recipes are a few dozen lines; a bigger file is a mistake (a model or data set passed by accident)."""

SUFFIXES = (".yaml", ".yml", ".toml")

CLI_ONLY_KEYS = frozenset({"quiet", "json", "dry_run"})
"""Keys in ``Recipe.values`` that are not ``api.build`` arguments: the CLI acts on them itself."""

def _fail(message: str, item: int | str | None = None) -> PydanticCustomError:
    """A validator's error carrying a finished sentence (it follows the key's name in the report) and,
    when one list item or sub-key is at fault, which one (its line is reported)."""
    return PydanticCustomError("recipe", "{message}", {"message": message, "item": item})


def _listed(value: Any) -> Any:
    # `target: x86` and `input: x:1x3x8x8` read naturally as one value; the api wants a list.
    return [value] if isinstance(value, str) else value


def _variant(spec: str) -> tuple[str, str]:
    """(target, precision) of `TARGET` or `TARGET:PRECISION`, as `edgekiln build --target` reads it."""
    name, _, precision = spec.partition(":")
    name = name.strip()
    targets = _targets()
    return name, precision.strip().lower() or (targets[name].precision if name in targets else "")


@cache
def _targets() -> dict[str, Any]:
    from backends.registry import all_targets

    return all_targets()


def _known_target(spec: str) -> str:
    name, precision = _variant(spec)
    targets = _targets()
    if name not in targets:
        close = difflib.get_close_matches(name, targets, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else ""
        raise _fail(f"names an unknown target '{name}'{hint}; known targets: {', '.join(targets)}")
    if precision not in PRECISIONS:
        raise _fail(f"names an unknown precision '{precision}' in '{spec}'; precisions: {', '.join(PRECISIONS)}")
    return spec


def _no_repeats(specs: list[str]) -> list[str]:
    # `x86` and `x86:fp32` are one artifact (fp32 is x86's default): the same folder built twice.
    variants = [_variant(spec) for spec in specs]
    if len(set(variants)) != len(variants):
        again = next(i for i, variant in enumerate(variants) if variant in variants[:i])
        raise _fail(f"lists '{specs[again]}' twice", item=again)
    return specs


def _not_empty(values: list[Any]) -> list[Any]:
    if not values:
        raise _fail("is an empty list; list at least one value or leave the key out")
    return values


_Number = Annotated[float, Field(allow_inf_nan=False)]
_Text = Annotated[str, Field(min_length=1)]
_Texts = Annotated[list[_Text], BeforeValidator(_listed), AfterValidator(_not_empty)]
_TargetNames = Annotated[list[Annotated[str, AfterValidator(_known_target)]], BeforeValidator(_listed),
                         AfterValidator(_not_empty), AfterValidator(_no_repeats)]


class _RecipeChecks(BaseModel):
    """The checks of recipe values that need more than a type: the keys' fields are generated (``_schema``).

    strict: YAML and TOML values are already typed, so "3" for a count or 1 for a flag is a mistake
    to report, not to coerce. Bounds are the option groups' own.
    """

    model_config = ConfigDict(extra="forbid", strict=True, protected_namespaces=())

    @field_validator("lowrank_ops", check_fields=False)
    @classmethod
    def _ops(cls, value: Any) -> Any:
        if isinstance(value, str) and value.strip(",").strip():
            return value  # "Gemm,MatMul" as on the command line
        if isinstance(value, list) and value and all(isinstance(v, str) and v for v in value):
            return value
        raise _fail(f"must be operator types, as a list or comma-separated text, got {_show(value)}")

    @field_validator("lowrank_ranks", "lowrank_rank", check_fields=False)
    @classmethod
    def _ranks(cls, value: Any) -> Any:
        value = _listed(value)
        if isinstance(value, dict):
            for node, rank in value.items():
                if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1:
                    raise _fail(f"must give each node a positive whole rank, got {_show(rank)} for '{node}'",
                                item=node)
            return value
        if isinstance(value, list):
            for index, item in enumerate(value):
                node, sep, rank = item.rpartition("=") if isinstance(item, str) else ("", "", "")
                if not (sep and node and rank.isdigit() and int(rank) > 0):
                    raise _fail(f"expects NODE=RANK items (or a table of node = rank), got {_show(item)}",
                                item=index)
            return value
        raise _fail(f"must be NODE=RANK items or a table of node = rank, got {_show(value)}")

    @field_validator("model_kwargs", check_fields=False)
    @classmethod
    def _model_kwargs(cls, value: Any) -> Any:
        if isinstance(value, dict):
            return value
        if isinstance(value, str):
            try:
                parsed = json.loads(value)
            except json.JSONDecodeError as exc:
                raise _fail(f"is not valid JSON: {exc.msg} at position {exc.pos}") from None
            if isinstance(parsed, dict):
                return value
        raise _fail(f"must be a table of constructor arguments (or a JSON object), got {_show(value)}")

    @field_validator("preprocess", check_fields=False)
    @classmethod
    def _preprocess(cls, value: Any) -> Any:
        # calibration.spec imports numpy and Pillow: only pay for it when the recipe has the key.
        from calibration.spec import PRESETS, PreprocessSpec

        if isinstance(value, str):
            if value not in PRESETS:
                close = difflib.get_close_matches(value, PRESETS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise _fail(f"names an unknown preset '{value}'{hint}; presets: {', '.join(PRESETS)}")
            return value
        if isinstance(value, dict):
            try:
                PreprocessSpec(**value)
            except UsageError as exc:
                cause = exc.__cause__
                bad = cause.errors()[0]["loc"] if isinstance(cause, ValidationError) and cause.errors() else ()
                reason = exc.message.removeprefix("invalid preprocessing: ")
                raise _fail(f"is not a valid spec: {reason}", item=bad[0] if bad else None) from None
            return value
        raise _fail(f"must be a preset name or a table of preprocessing settings, got {_show(value)}")


# ---- the schema, generated from the build's option groups --------------------------------------

# Keys that are not settings of a group: what build's positional arguments and CLI-only flags read.
_OWN_FIELDS: dict[str, Any] = {"source": (_Text | None, None), "output": (_Text | None, None),
                               "quiet": (bool | None, None), "dry_run": (bool | None, None),
                               "json_": (bool | None, Field(None, alias="json"))}  # 'json' shadows BaseModel.json


@dataclass(frozen=True)
class _Schema:
    model: type[BaseModel]
    aliases: dict[str, tuple[str, bool]]
    """Recipe spelling (dashes turned into underscores) -> (api keyword, whether the boolean is inverted)."""
    paths: frozenset[str]
    tables: frozenset[str]
    """The only options whose value may be a table: the api takes a dict for each."""
    per_target: frozenset[str]
    """compile/calibrate flags that build refuses: it chooses them per target."""

    @property
    def keys(self) -> tuple[str, ...]:
        return tuple(f.alias or name for name, f in self.model.model_fields.items())


def _recipe_type(setting: Any) -> Any:
    """A setting's type as a recipe value: YAML/TOML text for paths, lists for repeatable values."""
    bounds = Field(**setting.bounds) if setting.bounds else None
    if setting.keyword == "targets":
        kind: Any = _TargetNames
    elif setting.kind == "any" or setting.spec.pairs or setting.spec.csv:
        return Any  # checked by _RecipeChecks' validators
    elif setting.spec.multiple:
        kind = _Texts
    elif setting.kind == "choice":
        kind = Literal[setting.choices]
    elif setting.kind in ("str", "path"):
        kind = _Text
    elif setting.kind == "float":
        kind = Annotated[_Number, bounds] if bounds else _Number
    elif setting.kind == "int":
        kind = Annotated[int, bounds] if bounds else int
    else:
        kind = bool
    return kind | None


@cache
def _schema() -> _Schema:
    from pydantic import create_model

    from toolchain.api import build_settings
    from toolchain.passes.registry import BUILD_PASSES

    fields: dict[str, Any] = dict(_OWN_FIELDS) | {name: (bool | None, None) for name in BUILD_PASSES}
    aliases: dict[str, tuple[str, bool]] = {}
    paths, tables = {"source", "output"}, set()
    for setting in build_settings():
        fields[setting.keyword] = (_recipe_type(setting), None)
        spelled = setting.flag.removeprefix("--").replace("-", "_")
        off = setting.off_flag.removeprefix("--").replace("-", "_") if setting.off_flag else None
        for alias, inverted in ((spelled, setting.spec.negate), (off, True)):
            if alias and alias != setting.keyword:
                aliases[alias] = (setting.keyword, inverted)
                fields[alias] = (_recipe_type(setting), None)
        if setting.kind == "path":
            paths.add(setting.keyword)
        if setting.kind == "any" or setting.spec.pairs:
            tables.add(setting.keyword)
    from toolchain.settings import QuantSettings

    per_target = {spelled for spelled, (keyword, _) in aliases.items() if keyword in QuantSettings.PER_TARGET}
    model = create_model("_RecipeModel", __base__=_RecipeChecks, **fields)
    return _Schema(model, aliases, frozenset(paths), frozenset(tables),
                   frozenset(per_target | set(QuantSettings.PER_TARGET)))


@dataclass(frozen=True)
class Recipe:
    """A loaded recipe: ``values`` keyed by ``api.build``'s keyword names (plus ``CLI_ONLY_KEYS``)."""

    path: Path
    values: dict[str, Any]
    lines: dict[str, int] = field(default_factory=dict)
    """The line that set each value (same keys), for messages about a value found bad later."""


@dataclass
class _Entry:
    key: str  # as written in the file
    value: Any
    line: int
    item_lines: dict[Any, int] = field(default_factory=dict)  # list index or sub-key -> line


def load_recipe(path: Path) -> Recipe:
    """Read, check and resolve a YAML (.yaml/.yml) or TOML (.toml) recipe; any problem is a ``UsageError``."""
    path = Path(path)
    text = _read_text(path)
    entries = _toml_entries(text, path) if path.suffix.lower() == ".toml" else _yaml_entries(text, path)
    if not entries:
        raise UsageError(f"{path}: the recipe is empty (only comments or blank lines); it needs at least one option")
    return _validate(entries, path)


def merge_recipe(recipe_values: dict[str, Any], cli_values: dict[str, Any], explicit: set[str]) -> dict[str, Any]:
    """Options for ``api.build``: a flag typed on the command line (its api name in ``explicit``) beats the
    recipe, and the recipe beats the CLI's defaults."""
    return {**cli_values, **{k: v for k, v in recipe_values.items() if k not in explicit}}


# ---- reading -----------------------------------------------------------------------------------


def _read_text(path: Path) -> str:
    if not path.exists():
        raise UsageError(f"{path}: no such recipe file")
    if path.is_dir():
        raise UsageError(f"{path}: is a folder, not a recipe file")
    if path.suffix.lower() not in SUFFIXES:
        raise UsageError(f"{path}: unknown recipe format '{path.suffix or '(no extension)'}'; "
                         f"accepted: {', '.join(SUFFIXES)}")
    if not path.is_file():
        raise UsageError(f"{path}: is not a regular file")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RECIPE_BYTES + 1)  # bounded even if the file grows while read
    except OSError as exc:
        raise UsageError(f"{path}: cannot read the recipe: {exc.strerror or exc}") from exc
    if len(data) > MAX_RECIPE_BYTES:
        raise UsageError(f"{path}: too large for a recipe (over {MAX_RECIPE_BYTES // (1 << 20)} MiB)")
    if b"\0" in data:
        line = data.count(b"\n", 0, data.index(b"\0")) + 1
        raise UsageError(f"{path}:{line}: binary data; a recipe is a YAML or TOML text file")
    try:
        text = data.decode("utf-8-sig")  # editors on Windows may add a byte-order mark
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise UsageError(f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); "
                         "save the recipe as UTF-8") from None
    if not text.strip():
        raise UsageError(f"{path}: the recipe is empty")
    return text


# ---- YAML --------------------------------------------------------------------------------------


@cache
def _yaml_loader() -> type:
    """SafeLoader (plain data only, never Python objects) that also reads YAML 1.2 floats like 1e-4.

    PyYAML follows YAML 1.1, where `atol: 1e-4` is the *string* '1e-4' (an exponent needs a dot),
    which would make a correct recipe fail with "must be a number".
    """
    import yaml

    class RecipeLoader(yaml.SafeLoader):
        pass

    RecipeLoader.add_implicit_resolver(  # copies the inherited table: SafeLoader itself is untouched
        "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789."))
    return RecipeLoader


def _yaml_entries(text: str, path: Path) -> list[_Entry]:
    try:
        import yaml
    except ImportError:
        raise MissingDependencyError("YAML recipes need PyYAML", hint="pip install pyyaml, or write the recipe "
                                     "in TOML") from None
    loader = None
    try:
        loader = _yaml_loader()(text)  # its reader already refuses control characters
        root = loader.get_single_node()
        if root is None:
            return []
        if not isinstance(root, yaml.MappingNode):
            kind = "a list" if isinstance(root, yaml.SequenceNode) else f"the value {_show(root.value)}"
            raise UsageError(f"{path}:{root.start_mark.line + 1}: a recipe is a mapping of 'option: value' lines, "
                             f"not {kind}")
        _reject_yaml_duplicates(root, path, yaml)
        entries = []
        for key_node, value_node in root.value:
            line = key_node.start_mark.line + 1
            if not isinstance(key_node, yaml.ScalarNode):
                raise UsageError(f"{path}:{line}: a key must be an option name, not a list or mapping")
            if not isinstance(loader.construct_object(key_node, deep=True), str):  # 1:, true:, null:
                raise UsageError(f"{path}:{line}: {_show(key_node.value)} is not an option name")
            key = key_node.value
            entries.append(_Entry(key, loader.construct_object(value_node, deep=True), line,
                                  _yaml_item_lines(value_node, yaml)))
        return entries
    except yaml.MarkedYAMLError as exc:
        raise UsageError(_yaml_error_line(path, exc)) from None
    except yaml.reader.ReaderError as exc:  # a control character the YAML reader refuses
        line = text.count("\n", 0, exc.position) + 1
        code = exc.character if isinstance(exc.character, int) else ord(exc.character)
        raise UsageError(f"{path}:{line}: invalid YAML: control character U+{code:04X} is not allowed") from None
    except RecursionError:
        raise UsageError(f"{path}: invalid YAML: nested too deeply") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_error_line(path: Path, exc: Any) -> str:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "malformed YAML"
    where = f" (column {mark.column + 1})" if mark else ""
    context = exc.context_mark
    if exc.context and context and mark and context.line != mark.line:
        where = f" ({exc.context} on line {context.line + 1})"
    return f"{path}:{mark.line + 1 if mark else 1}: invalid YAML: {problem}{where}"


def _reject_yaml_duplicates(root: Any, path: Path, yaml: Any) -> None:
    """YAML keeps the last of two equal keys without a word: a classic source of "my setting is ignored"."""
    stack, visited = [root], set()
    while stack:  # iterative, and each node once: aliases may share nodes many times over
        node = stack.pop()
        if id(node) in visited:
            continue
        visited.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if isinstance(key_node, yaml.ScalarNode):
                    line, key = key_node.start_mark.line + 1, (key_node.tag, key_node.value)
                    if key in first:
                        raise UsageError(f"{path}:{line}: duplicate key '{key_node.value}' "
                                         f"(first set on line {first[key]})")
                    first[key] = line
                stack.append(value_node)
        elif isinstance(node, yaml.SequenceNode):
            stack.extend(node.value)


def _yaml_item_lines(node: Any, yaml: Any) -> dict[Any, int]:
    if isinstance(node, yaml.SequenceNode):
        return {i: item.start_mark.line + 1 for i, item in enumerate(node.value)}
    if isinstance(node, yaml.MappingNode):
        return {k.value: k.start_mark.line + 1 for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
    return {}


# ---- TOML --------------------------------------------------------------------------------------


def _toml_entries(text: str, path: Path) -> list[_Entry]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        try:
            import tomli as tomllib  # type: ignore[no-redef]
        except ImportError:
            raise MissingDependencyError("TOML recipes need Python 3.11+ or the tomli package",
                                         hint="pip install tomli, or write the recipe in YAML") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        at = re.search(r"\(at line (\d+), column (\d+)\)", message)
        problem = message[:at.start()].strip() if at else message.split("\n")[0]
        where = f"{at.group(1)}: invalid TOML: {problem} (column {at.group(2)})" if at else f" invalid TOML: {problem}"
        raise UsageError(f"{path}:{where}") from None
    except RecursionError:
        raise UsageError(f"{path}: invalid TOML: nested too deeply") from None
    lines = _toml_key_lines(text)
    entries = []
    for key, value in data.items():
        items = {sub: lines[(key, sub)] for sub in value if (key, sub) in lines} if isinstance(value, dict) else {}
        entries.append(_Entry(key, value, lines.get((key,), 1), items))
    return entries


# tomllib reports no positions, so key lines come from this small scanner over the (already valid)
# text. It knows `key = value` lines (bare, quoted and dotted keys), `[table]`/`[[array]]` headers,
# comments, strings, multi-line strings and arrays spanning lines. Limits: list items and keys
# inside inline tables get their key's line, and a value's own line is never finer than that.
_SEGMENT = r"""[A-Za-z0-9_-]+|"(?:[^"\\]|\\.)*"|'[^']*'"""
_KEY_PATH = rf"(?:{_SEGMENT})(?:[ \t]*\.[ \t]*(?:{_SEGMENT}))*"
_HEADER = re.compile(rf"[ \t]*\[\[?[ \t]*({_KEY_PATH})[ \t]*\]\]?")
_ASSIGN = re.compile(rf"[ \t]*({_KEY_PATH})[ \t]*=")


def _toml_key_lines(text: str) -> dict[tuple[str, ...], int]:
    """First line of every key path (("calib-size",), ("preprocess", "height"), ...)."""
    lines: dict[tuple[str, ...], int] = {}
    table: tuple[str, ...] = ()
    depth, closing = 0, ""  # open brackets of a value spanning lines; delimiter of an open multi-line string
    for number, line in enumerate(text.splitlines(), 1):
        rest = line
        if closing:
            end = line.find(closing)
            if end < 0:
                continue
            rest, closing = line[end + len(closing):], ""
        elif depth == 0:
            header, assign = _HEADER.match(line), _ASSIGN.match(line)
            if header:
                table = _key_segments(header.group(1))
                keys, rest = table, line[header.end():]
            elif assign:
                keys, rest = table + _key_segments(assign.group(1)), line[assign.end():]
            else:
                keys = ()
            for end in range(1, len(keys) + 1):
                lines.setdefault(keys[:end], number)
        depth, closing = _scan_toml_value(rest, depth)
    return lines


def _key_segments(path: str) -> tuple[str, ...]:
    segments = []
    for token in re.findall(_SEGMENT, path):
        if token.startswith('"'):
            try:
                token = json.loads(token)  # TOML's basic-string escapes are (nearly) JSON's
            except json.JSONDecodeError:
                token = token[1:-1]
        elif token.startswith("'"):
            token = token[1:-1]
        segments.append(token)
    return tuple(segments)


def _scan_toml_value(rest: str, depth: int) -> tuple[int, str]:
    """Bracket depth after ``rest``, and the delimiter of a multi-line string left open on it."""
    i = 0
    while i < len(rest):
        char = rest[i]
        if char == "#":
            break
        if rest.startswith(('"""', "'''"), i):
            end = rest.find(rest[i:i + 3], i + 3)
            if end < 0:
                return depth, rest[i:i + 3]
            i = end + 3
            continue
        if char == '"':
            i += 1
            while i < len(rest) and rest[i] != '"':
                i += 2 if rest[i] == "\\" else 1
        elif char == "'":
            end = rest.find("'", i + 1)
            i = end if end >= 0 else len(rest)
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth = max(0, depth - 1)
        i += 1
    return depth, ""


# ---- checking ----------------------------------------------------------------------------------


def _validate(entries: list[_Entry], path: Path) -> Recipe:
    schema = _schema()
    problems: list[tuple[int, str]] = []  # (line, message): the first line's problem is reported
    by_key: dict[str, _Entry] = {}
    by_api: dict[str, _Entry] = {}
    for entry in entries:
        spelled = entry.key.replace("-", "_")
        api_name = schema.aliases.get(spelled, (spelled, False))[0]
        if entry.value is None:  # YAML's `calib:` with nothing after it: an unfinished edit, not a default
            problems.append((entry.line, f"'{entry.key}' has no value; give one or remove the line"))
        elif spelled in schema.per_target:
            problems.append((entry.line, f"'{entry.key}' is chosen per target by build; "
                                         "set it with 'edgekiln compile' instead"))
        elif isinstance(entry.value, dict) and api_name not in schema.tables:
            problems.append((entry.line, f"'{entry.key}' is a nested table; recipe options are flat "
                                         "(only preprocess, model-kwargs and lowrank-rank take a table)"))
        elif api_name in by_api:
            other = by_api[api_name]
            problems.append((entry.line, f"'{entry.key}' sets the same option as '{other.key}' "
                                         f"on line {other.line}"))
        else:
            by_key[spelled] = by_api[api_name] = entry
    try:
        model = schema.model.model_validate({key: entry.value for key, entry in by_key.items()})
    except ValidationError as exc:
        problems += [_describe(error, by_key) for error in exc.errors()]
    if problems:
        line, message = min(problems, key=lambda problem: problem[0])
        raise UsageError(f"{path}:{line}: {message}")
    # The validated attributes as they are, not model_dump(): dumping would copy every value, and a
    # YAML alias shared a million times over inside model-kwargs would be copied a million times.
    fields = type(model).model_fields
    checked = {fields[name].alias or name: getattr(model, name) for name in model.model_fields_set}
    return _resolved(checked, by_key, path)


def _resolved(checked: dict[str, Any], by_key: dict[str, _Entry], path: Path) -> Recipe:
    schema = _schema()
    folder = path.absolute().parent
    values: dict[str, Any] = {}
    lines: dict[str, int] = {}
    for spelled in (key for key in by_key if key in checked):  # in the recipe's order
        value = checked[spelled]
        api_name, inverted = schema.aliases.get(spelled, (spelled, False))
        if inverted:
            value = not value
        elif api_name in schema.paths:
            value = _relative_to(folder, value)
        elif api_name == "model_class":
            value = _model_class(folder, value)
        values[api_name] = value
        lines[api_name] = by_key[spelled].line
    return Recipe(path=path, values=values, lines=lines)


def _relative_to(folder: Path, value: str) -> Path:
    # normpath, not resolve(): keep the user's symlinks, drop the "recipes/../" noise in messages.
    return Path(os.path.normpath(folder / Path(value).expanduser()))


def _model_class(folder: Path, value: str) -> str:
    """`path/to/file.py:Class` names a file, which is relative to the recipe like every other path."""
    module, sep, name = value.rpartition(":")
    if sep and module.endswith(".py"):
        return f"{_relative_to(folder, module)}:{name}"
    return value


def _describe(error: Any, by_key: dict[str, _Entry]) -> tuple[int, str]:
    """One pydantic error as (line, sentence), phrased for the key as the user wrote it."""
    location = error["loc"]
    spelled = str(location[0]) if location else ""
    if error["type"] == "extra_forbidden" or spelled not in by_key:
        entry = by_key.get(spelled)
        line = entry.line if entry else 1
        return line, f"unknown key '{entry.key if entry else spelled}'{_suggestion(spelled)}"
    entry = by_key[spelled]
    context = error.get("ctx") or {}
    item = location[1] if len(location) > 1 else context.get("item")
    line = entry.item_lines.get(item, entry.line)
    subject = f"'{entry.key}'"
    if error["type"] != "recipe" and isinstance(item, int):
        subject += f" item {item + 1}"
    return line, f"{subject} {_phrase(error)}"


def _suggestion(key: str) -> str:
    candidates = [k.replace("_", "-") for k in _schema().keys]
    close = difflib.get_close_matches(key.lower().strip("-").replace("_", "-"), candidates, n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
