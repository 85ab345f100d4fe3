"""The table of backends: built-ins plus any registered by plugins.

A plugin package adds a backend with an entry point in the ``edgekiln.backends``
group pointing at a ``Backend`` subclass.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

from backends.base import Backend
from toolchain.errors import UsageError

ENTRY_POINT_GROUP = "edgekiln.backends"

BUILTIN: dict[str, str] = {
    "onnxruntime": "backends.onnxruntime:OnnxRuntimeBackend",
}


def _load(reference: str) -> type[Backend]:
    module_name, _, attribute = reference.partition(":")
    return getattr(importlib.import_module(module_name), attribute)


def backend_table() -> dict[str, str]:
    """Backend name -> ``module:Class`` reference, built-ins first, then plugins."""
    table = dict(BUILTIN)
    for entry in entry_points(group=ENTRY_POINT_GROUP):
        table.setdefault(entry.name, entry.value)
    return table


def get_backend(name: str) -> Backend:
    table = backend_table()
    if name not in table:
        raise UsageError(f"unknown backend '{name}'; known backends: {', '.join(table)}")
    return _load(table[name])()


def all_backends() -> list[Backend]:
    return [_load(ref)() for ref in backend_table().values()]
