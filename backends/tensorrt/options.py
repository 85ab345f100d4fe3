"""The TensorRT backend's own compile settings, declared once (flags, recipe keys and API keywords come from here).

Their values are checked by the backend itself (``settings.resolve_settings``, ``builder.BuildPlan``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from toolchain.options import OptionGroup


class TensorRTOptions(OptionGroup):
    strict: bool = Field(False, description="TensorRT: fail instead of building FP16 when the device has no fast "
                                            "INT8 (Jetson Nano).")
    dla_core: int | None = Field(None, description="TensorRT: DLA core (Xavier/Orin), GPU fallback on.")
    workspace_mb: int | None = Field(None, description="TensorRT: builder memory-pool limit in MiB.")
    int8_mode: Literal["qdq", "cache"] | None = Field(
        None, description="TensorRT: explicit QDQ INT8 (TensorRT >= 8.5) or implicit INT8 with a calibration cache.")
    tensorrt_version: str | None = Field(None, description="TensorRT: the device's exact version (e.g. 8.2.1).")
    max_batch: int | None = Field(None, description="TensorRT: largest batch of the dynamic-shape profile.")
    opt_batch: int | None = Field(None, description="TensorRT: batch the profile is tuned for.")
