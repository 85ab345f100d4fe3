"""The table of backends: built-ins plus any registered by plugins.

A plugin package adds a backend with an entry point in the ``edgekiln.backends``
group pointing at a ``Backend`` subclass.
"""

from __future__ import annotations

import importlib
from functools import cache
from importlib.metadata import entry_points

from backends.base import Backend
from toolchain.errors import UsageError
from toolchain.targets import Target

ENTRY_POINT_GROUP = "edgekiln.backends"

BUILTIN: dict[str, str] = {
    "onnxruntime": "backends.onnxruntime:OnnxRuntimeBackend",
    "tensorrt": "backends.tensorrt:TensorRTBackend",
    "tflite": "backends.tflite:TFLiteBackend",
}


def _load(reference: str) -> type[Backend]:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def backend_table() -> dict[str, str]:
    """Backend name -> ``module:Class`` reference, built-ins first, then plugins."""
    table = dict(BUILTIN)
    for name, reference in _plugins():
        table.setdefault(name, reference)
    return table


@cache
def _plugins() -> tuple[tuple[str, str], ...]:
    # Scanning every installed distribution's metadata costs about 11 ms, and a build asks ~50 times
    # (0.6 s of its orchestration overhead, bench/build_overhead.md). Plugins are installed before a
    # process starts, so one scan per process sees them all.
    return tuple((entry.name, entry.value) for entry in entry_points(group=ENTRY_POINT_GROUP))


def get_backend(name: str) -> Backend:
    table = backend_table()
    if name not in table:
        raise UsageError(f"unknown backend '{name}'; known backends: {', '.join(table)}")
    return _load(table[name])()


class UnloadableBackend(Backend):
    """Stands in for a registered backend whose module fails to import, so listing never crashes."""

    def __init__(self, name: str, reason: str) -> None:
        from backends.base import Capabilities

        self.name, self.description, self._reason = name, "could not be loaded", reason
        self.capabilities = Capabilities(precisions=(), opset_range=(0, 0))
        self.required_modules = ()

    def is_available(self) -> tuple[bool, str]:
        return False, self._reason

    def compile(self, onnx_path, options, out_dir):  # pragma: no cover - never selected
        raise UsageError(f"backend '{self.name}' {self._reason}")

    def load(self, model_path, runtime_options):  # pragma: no cover - never selected
        raise UsageError(f"backend '{self.name}' {self._reason}")


def all_backends() -> list[Backend]:
    backends: list[Backend] = []
    for name, reference in backend_table().items():
        try:
            backends.append(_load(reference)())
        except Exception as exc:  # a broken plugin must not break 'edgekiln backends'
            backends.append(UnloadableBackend(name, f"failed to load {reference}: {type(exc).__name__}: {exc}"))
    return backends


def _declared() -> list[type[Backend]]:
    """Every backend class that loads (a broken plugin is left out here; ``all_backends`` reports it)."""
    classes = []
    for reference in backend_table().values():
        try:
            classes.append(_load(reference))
        except Exception:  # noqa: BLE001 - listed as unloadable by 'edgekiln backends'
            continue
    return classes


def backend_option_groups() -> list[tuple[str, type]]:
    """(backend name, its options group) for every backend that declares compile settings."""
    return [(cls.name, cls.options) for cls in _declared() if cls.options is not None]


def backend_option_owners() -> dict[str, str]:
    """Backend option keyword -> the backend that reads it."""
    from toolchain.options import keywords_of

    return {keyword: name for name, group in backend_option_groups() for keyword in keywords_of(group)}


def all_targets() -> dict[str, Target]:
    """Every device profile: the built-in ones, then those plugin backends declare (a clash keeps the first)."""
    from toolchain.targets import TARGETS

    found = dict(TARGETS)
    for cls in _declared():
        for target in cls.targets:
            found.setdefault(target.name, target)
    return found


def find_target(name: str) -> Target:
    """The device profile called ``name``; an unknown one is a ``UsageError`` listing the known ones."""
    targets = all_targets()
    if name not in targets:
        raise UsageError(f"unknown target '{name}'; known targets: {', '.join(targets)}")
    return targets[name]


def backend_distributions(name: str) -> tuple[str, ...]:
    """The distributions whose versions change what backend ``name`` writes (empty for an unknown one)."""
    table = backend_table()
    try:
        return tuple(_load(table[name]).distributions) if name in table else ()
    except Exception:  # noqa: BLE001 - a plugin that fails to load fails where it is used, in its own words
        return ()
