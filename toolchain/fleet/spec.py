"""The fleet file: models (build recipes or the same keys inline), targets, defaults and resources.

```yaml
targets: [x86, x86:int8]            # every model's targets unless it lists its own
defaults: {calib: samples, bench-iterations: 5}   # recipe keys every model starts from
models:
  - models/a.yaml                   # a build recipe
  - recipe: models/b.yaml           # a recipe with per-model overrides
    targets: [x86]
  - {name: c, source: c.onnx}       # the recipe's keys inline
resources:                          # Ray resources per target (on top of the defaults in plan.py)
  jetson-nano: {jetson-nano: 1}
```

Keys are checked by the recipe checker (``toolchain.recipe``), so every problem is one line naming the
fleet file and line. Precedence: defaults < the model's recipe file < its inline keys.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.errors import UsageError
from toolchain.recipe import (MAX_RECIPE_BYTES, Recipe, _Entry, _reject_yaml_duplicates, _validate,
                              _yaml_error_line, _yaml_item_lines, _yaml_loader, load_recipe)

TOP_KEYS = ("targets", "defaults", "models", "resources")
MODEL_KEYS = frozenset({"name", "recipe"})
# Set once for the whole fleet by 'edgekiln fleet' itself, never per model.
FLEET_OWNED = frozenset({"output", "cache_dir", "no_cache", "fail_fast", "dry_run", "json", "quiet"})
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class ModelSpec:
    """One model of the fleet: its folder name and ``api.build_request`` options, with the line it is on."""

    name: str
    values: dict[str, Any]
    line: int


@dataclass(frozen=True)
class FleetSpec:
    path: Path
    models: list[ModelSpec]
    resources: dict[str, dict[str, float]] = field(default_factory=dict)


def _read(path: Path) -> str:
    if not path.is_file():
        raise UsageError(f"{path}: no such fleet file")
    with path.open("rb") as handle:
        data = handle.read(MAX_RECIPE_BYTES + 1)  # bounded, whatever the file's size
    if len(data) > MAX_RECIPE_BYTES or b"\0" in data:
        raise UsageError(f"{path}: not a fleet file (binary, or over 1 MiB)")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: not UTF-8 text; save the fleet file as UTF-8") from None


def _line(node: Any) -> int:
    return node.start_mark.line + 1


def _entries(node: Any, loader: Any, yaml: Any, path: Path, skip: frozenset[str] = frozenset()) -> list[_Entry]:
    """A YAML mapping's keys as the recipe checker's entries, each with its line in the fleet file."""
    if not isinstance(node, yaml.MappingNode):
        raise UsageError(f"{path}:{_line(node)}: expected a mapping of 'option: value' lines")
    entries = []
    for key_node, value_node in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            raise UsageError(f"{path}:{_line(key_node)}: a key must be an option name")
        if key_node.value in skip:
            continue
        entries.append(_Entry(key_node.value, loader.construct_object(value_node, deep=True), _line(key_node),
                              _yaml_item_lines(value_node, yaml)))
    return entries


def _checked(entries: list[_Entry], path: Path) -> Recipe:
    recipe = _validate(entries, path) if entries else Recipe(path, {}, {})
    for key, line in recipe.lines.items():
        if key in FLEET_OWNED:
            raise UsageError(f"{path}:{line}: '{key.replace('_', '-')}' is set for the whole fleet by "
                             "'edgekiln fleet' (its options), not in the fleet file")
    return recipe


def _scalar(mapping: Any, key: str, yaml: Any, path: Path) -> tuple[str, int] | None:
    """The text value of ``key`` in a mapping node and its line, or None when the key is absent."""
    for key_node, value_node in mapping.value:
        if key_node.value == key:
            if not isinstance(value_node, yaml.ScalarNode) or not value_node.value:
                raise UsageError(f"{path}:{_line(key_node)}: '{key}' must be text")
            return value_node.value, _line(value_node)
    return None


def _model(node: Any, loader: Any, yaml: Any, path: Path, defaults: Recipe) -> ModelSpec:
    folder = path.absolute().parent
    line = _line(node)
    if isinstance(node, yaml.ScalarNode):  # a bare recipe path
        recipe_ref, inline, name = (node.value, line), Recipe(path, {}, {}), None
    elif isinstance(node, yaml.MappingNode):
        recipe_ref, named = _scalar(node, "recipe", yaml, path), _scalar(node, "name", yaml, path)
        name = named[0] if named else None
        inline = _checked(_entries(node, loader, yaml, path, skip=MODEL_KEYS), path)
        if named and not _NAME.match(name):
            raise UsageError(f"{path}:{named[1]}: model name '{name}' must be letters, digits, '.', '_' or '-'")
    else:
        raise UsageError(f"{path}:{line}: a model is a recipe path or a mapping of recipe keys")
    from_file: dict[str, Any] = {}
    if recipe_ref is not None:
        recipe_path = Path(recipe_ref[0]).expanduser()
        recipe_path = recipe_path if recipe_path.is_absolute() else folder / recipe_path
        if not recipe_path.exists():
            raise UsageError(f"{path}:{recipe_ref[1]}: recipe '{recipe_ref[0]}' does not exist")
        from_file = load_recipe(recipe_path).values  # its own errors name its own file and line
        for key in FLEET_OWNED & from_file.keys():
            from_file.pop(key)  # a recipe's output (or cache) is the single build's; the fleet chooses
    values = {**defaults.values, **from_file, **inline.values}
    if name is None:
        stem = Path(recipe_ref[0]).stem if recipe_ref else Path(values.get("source") or "").stem
        name = re.sub(r"[^A-Za-z0-9._-]", "_", stem) or f"model-{line}"
    if values.get("source") is None and values.get("model_class") is None:
        raise UsageError(f"{path}:{line}: model '{name}' has no 'source' (or 'model-class'); "
                         "the fleet does not build the bundled example")
    return ModelSpec(name, values, line)


def _resources(node: Any, loader: Any, yaml: Any, path: Path) -> dict[str, dict[str, float]]:
    from backends.registry import all_targets

    known = all_targets()
    table = {}
    for entry in _entries(node, loader, yaml, path):
        if entry.key not in known:
            raise UsageError(f"{path}:{entry.line}: resources for unknown target '{entry.key}'; "
                             f"known targets: {', '.join(known)}")
        value = entry.value
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, (int, float))
                                                  and not isinstance(v, bool) and v >= 0 for k, v in value.items()):
            raise UsageError(f"{path}:{entry.line}: resources of '{entry.key}' must be a table of "
                             "name: amount (e.g. {num_gpus: 1} or {jetson-nano: 1})")
        table[entry.key] = {k: float(v) for k, v in value.items()}
    return table


def load_fleet(path: Path) -> FleetSpec:
    """Read and check a fleet file (YAML); any problem is one ``UsageError`` line with file:line."""
    import yaml

    path = Path(path)
    text = _read(path)
    loader = _yaml_loader()(text)
    try:
        root = loader.get_single_node()
        if root is None or not isinstance(root, yaml.MappingNode):
            raise UsageError(f"{path}:1: a fleet file is a mapping with 'models' (and 'targets', 'defaults')")
        _reject_yaml_duplicates(root, path, yaml)
        nodes: dict[str, Any] = {}
        for key_node, value_node in root.value:
            key = str(key_node.value)
            if key not in TOP_KEYS:
                close = difflib.get_close_matches(key, TOP_KEYS, n=1)
                hint = f" (did you mean '{close[0]}'?)" if close else ""
                raise UsageError(f"{path}:{_line(key_node)}: unknown key '{key}'{hint}; "
                                 f"a fleet file has {', '.join(TOP_KEYS)}")
            nodes[key] = (key_node, value_node)
        if "models" not in nodes:
            raise UsageError(f"{path}:1: the fleet file lists no 'models'")
        default_entries = _entries(nodes["defaults"][1], loader, yaml, path) if "defaults" in nodes else []
        if "targets" in nodes:
            key_node, value_node = nodes["targets"]
            default_entries.append(_Entry("targets", loader.construct_object(value_node, deep=True), _line(key_node),
                                          _yaml_item_lines(value_node, yaml)))
        defaults = _checked(default_entries, path)
        models_node = nodes["models"][1]
        if not isinstance(models_node, yaml.SequenceNode) or not models_node.value:
            raise UsageError(f"{path}:{_line(models_node)}: 'models' must be a non-empty list")
        models = [_model(node, loader, yaml, path, defaults) for node in models_node.value]
        seen: dict[str, int] = {}
        for model in models:
            if model.name in seen:
                raise UsageError(f"{path}:{model.line}: model name '{model.name}' is used twice (first on line "
                                 f"{seen[model.name]}); give one a 'name'")
            seen[model.name] = model.line
        resources = _resources(nodes["resources"][1], loader, yaml, path) if "resources" in nodes else {}
        return FleetSpec(path, models, resources)
    except yaml.MarkedYAMLError as exc:
        raise UsageError(_yaml_error_line(path, exc)) from None
    except yaml.YAMLError as exc:
        raise UsageError(f"{path}: invalid YAML: {exc}") from None
    finally:
        loader.dispose()
