"""The trtexec command that builds the engine on the device, and the script around it.

The flags follow the release rules in ``devices.RELEASES`` (workspace and
build-only flags changed between TensorRT 8.2, 8.4/8.5 and 8.6/10). The same
settings drive the Python-API builder (``builder.py``), so an engine built either
way gets the same cache key.
"""

from __future__ import annotations

import shlex

from backends.tensorrt.devices import TensorRTDevice
from backends.tensorrt.settings import BuildSettings, ShapeProfile


def precision_flags(settings: BuildSettings) -> list[str]:
    flags = []
    if settings.precision == "fp16" or (settings.precision == "int8" and settings.dla_core is not None):
        flags.append("--fp16")  # on the DLA, layers left in float must run FP16: the DLA has no FP32
    if settings.precision == "int8":
        flags.append("--int8")
    if settings.precision == "fp32":
        flags.append("--noTF32")  # FP32 asked means FP32: Ampere (Orin) would otherwise use TF32 matmuls
    return flags


def shape_flags(profiles: tuple[ShapeProfile, ...]) -> list[str]:
    """--minShapes/--optShapes/--maxShapes for the dynamic inputs (trtexec wants all three or none)."""
    dynamic = [p for p in profiles if p.dynamic]
    if not dynamic:
        return []
    return [f"--{kind}Shapes=" + ",".join(f"{_tensor_name(p.name)}:{'x'.join(map(str, getattr(p, kind)))}"
                                          for p in profiles)
            for kind in ("min", "opt", "max")]


def _tensor_name(name: str) -> str:
    # trtexec splits specs on ',' and on the last ':'; it strips single quotes, so quote names holding ':'.
    return f"'{name}'" if ":" in name else name


def trtexec_flags(settings: BuildSettings, device: TensorRTDevice, engine_source: str,
                  calibration_cache: str | None) -> list[str]:
    """Every flag of the build command except --saveEngine (the script names the engine by its cache key)."""
    release = device.release(settings.tensorrt_version)
    flags = [f"--onnx={engine_source}", *precision_flags(settings)]
    if calibration_cache:
        flags.append(f"--calib={calibration_cache}")
    flags.append(release.workspace_flag.format(mb=settings.workspace_mb))
    if settings.dla_core is not None:
        flags += [f"--useDLACore={settings.dla_core}", "--allowGPUFallback"]
    flags += shape_flags(settings.profiles)
    flags += ["--timingCacheFile=timing.cache", release.build_only_flag]
    return flags


SCRIPT = """#!/usr/bin/env bash
# Builds the TensorRT engine for {target} from the files in this folder, then checks it.
# Written by edgekiln {version} for TensorRT {tensorrt} ({jetpack}); run it on the device:
#   ./build_engine.sh            build (if no engine for this device and bundle exists yet) and verify
#   ./build_engine.sh --force    rebuild even if an engine for the current key exists
#   ./build_engine.sh --no-verify
# TRTEXEC=/path/to/trtexec and PYTHON=python3.x override the defaults below.
set -euo pipefail
cd "$(dirname "$0")"
TRTEXEC="${{TRTEXEC:-{trtexec}}}"
PYTHON="${{PYTHON:-python3}}"
FORCE=0
VERIFY=1
for arg in "$@"; do
  case "$arg" in
    --force) FORCE=1 ;;
    --no-verify) VERIFY=0 ;;
    *) echo "usage: $0 [--force] [--no-verify]" >&2; exit 2 ;;
  esac
done
if [ ! -x "$TRTEXEC" ]; then
  echo "error: trtexec not found at $TRTEXEC (install TensorRT, or set TRTEXEC=/path/to/trtexec)" >&2
  exit 2
fi
# File hashes, and the calibration cache header against this TensorRT (a mismatched cache is silently skipped).
"$PYTHON" verify_engine.py --check-bundle
# The engine is named by its cache key: model bytes + TensorRT version + GPU + build options.
KEY="$("$PYTHON" verify_engine.py --print-key)"
ENGINE="engines/model-${{KEY:0:16}}.engine"
mkdir -p engines
if [ -f "$ENGINE" ] && [ "$FORCE" = 0 ]; then
  echo "engine for this device and bundle already built: $ENGINE"
else
  "$TRTEXEC" \\
{flags}
    --saveEngine="$ENGINE.partial"
  mv "$ENGINE.partial" "$ENGINE"
  "$PYTHON" verify_engine.py --key-json > "${{ENGINE%.engine}}.json"
fi
ln -sf "$ENGINE" model.engine
echo "engine: $ENGINE (model.engine links to it)"
if [ "$VERIFY" = 1 ]; then
  "$PYTHON" verify_engine.py
fi
"""


def build_script(settings: BuildSettings, device: TensorRTDevice, flags: list[str], version: str) -> str:
    """build_engine.sh: checks the bundle, builds the engine named by its key with trtexec, verifies it."""
    lines = "".join(f"    {shlex.quote(flag)} \\\n" for flag in flags)
    return SCRIPT.format(target=device.target, version=version, tensorrt=settings.tensorrt_version,
                         jetpack=f"JetPack {device.jetpack}" if device.jetpack != "-" else "desktop",
                         trtexec=device.trtexec, flags=lines.rstrip("\n"))
