"""The base of pass configs, light to import (pydantic only): the CLI builds flags from configs at start-up."""

from __future__ import annotations

from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, ValidationError

from toolchain.errors import UsageError


class PassConfig(BaseModel):
    """Base of pass configs: typed, every field described, unknown keys rejected.

    The fields whose annotation carries a ``toolchain.options.Flag`` are user settings: their flags,
    recipe keys and API keywords are generated from the field (prefixed with ``prefix``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    prefix: ClassVar[str] = ""
    every_field: ClassVar[bool] = False

    @classmethod
    def from_options(cls, **options: Any) -> "PassConfig":
        """Validate user options, turning pydantic's report into one plain sentence."""
        try:
            return cls(**options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"invalid options for {cls.__name__}: {problems}") from exc
