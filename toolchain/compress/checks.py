"""Small checks shared by the compression options."""

from __future__ import annotations

from typing import Any


def is_whole_number(value: Any, minimum: int) -> bool:
    """True for an ``int`` (not a ``bool``) of at least ``minimum``."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= minimum
