"""The TFLite backend's own compile settings, declared once (flags, recipe keys and API keywords come from here).

Their values are checked by the backend itself (``builder.BuildPlan``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from toolchain.options import OptionGroup


class TFLiteOptions(OptionGroup):
    flash_kb: float | None = Field(None, description="TFLite (mcu): fail if the model needs more flash.")
    ram_kb: float | None = Field(None, description="TFLite (mcu): fail if the tensor arena needs more RAM.")
    io_dtype: Literal["float32", "int8"] | None = Field(
        None, description="TFLite INT8: input/output type (default float32; mcu always int8).")
