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

    def check_samples(self, given: bool) -> None:
        """Refuse settings that need samples when none are given (``given``: --calib was), before any work."""

    def describe(self) -> str:
        """What the pass will do with these settings, for a build's plan ('' : the table's help)."""
        return ""

    @classmethod
    def from_options(cls, **options: Any) -> "PassConfig":
        """Validate user options, turning pydantic's report into one plain sentence."""
        try:
            return cls(**options)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'config'}: {e['msg']}" for e in exc.errors())
            raise UsageError(f"invalid options for {cls.__name__}: {problems}") from exc


class NothingToDoError(UsageError):
    """The pass finds nothing to change in this model: the model is passed on as it was (a build says so)."""
