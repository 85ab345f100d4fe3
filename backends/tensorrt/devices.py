"""What each TensorRT target device can do, declared as data.

Every TensorRT-specific rule the backend follows (which TensorRT version the
device runs, the newest ONNX opset its parser takes, whether INT8 is fast, how
many DLA cores it has, which Python runs the on-device script, which trtexec
flags that version understands) lives in ``DEVICES``; the rest of the backend
reads these records instead of branching on target names.

Sources for the numbers (checked, not guessed):
- opsets: onnx-tensorrt ``docs/operators.md`` per release ("TensorRT 8.2 supports
  operators up to Opset 13", 8.5 and 8.6: 17, 10.0: "opset 9 to opset 20");
- trtexec flags: trtexec's ``sampleOptions.cpp`` / ``--help`` per release
  (8.2: ``--workspace=N`` in MiB and ``--buildOnly``; 8.4 added
  ``--memPoolSize=workspace:N`` in MiB and deprecated ``--workspace``; 10.x removed
  ``--workspace`` and uses ``--skipInference``);
- calibration-cache header: ``TRT-<NV_TENSORRT_VERSION>-EntropyCalibration2``,
  where the number is major*1000+minor*100+patch before 10 (8.2.1 -> 8201) and
  major*10000+minor*100+patch from 10 on (10.3.0 -> 100300). TensorRT skips a
  cache whose header does not match, so the header must name the device's version.
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.errors import UsageError

TRTEXEC = "/usr/src/tensorrt/bin/trtexec"
"""Where JetPack (and NVIDIA's deb/tar packages) install trtexec; not on PATH by default."""


@dataclass(frozen=True)
class TensorRTRelease:
    """Rules that depend on the TensorRT version only."""

    since: tuple[int, int]
    max_opset: int
    """Newest ONNX opset this release's ONNX parser accepts."""
    workspace_flag: str
    """trtexec flag for the builder workspace limit, ``{mb}`` replaced by MiB."""
    build_only_flag: str
    """trtexec flag that stops after building (no timing run)."""
    implicit_int8_deprecated: bool
    """The calibrator API (implicit INT8 from a calibration cache) is deprecated from TensorRT 10."""
    tensor_api: bool
    """Name-based I/O (num_io_tensors, execute_async_v3) exists; older releases only have bindings."""


RELEASES: tuple[TensorRTRelease, ...] = (  # newest first; each applies from ``since`` up to the next
    TensorRTRelease((10, 0), 20, "--memPoolSize=workspace:{mb}", "--skipInference", True, True),
    TensorRTRelease((9, 2), 19, "--memPoolSize=workspace:{mb}", "--skipInference", False, True),
    TensorRTRelease((8, 6), 17, "--memPoolSize=workspace:{mb}", "--skipInference", False, True),
    TensorRTRelease((8, 5), 17, "--memPoolSize=workspace:{mb}", "--buildOnly", False, True),
    TensorRTRelease((8, 4), 13, "--memPoolSize=workspace:{mb}", "--buildOnly", False, False),
    TensorRTRelease((8, 0), 13, "--workspace={mb}", "--buildOnly", False, False),
)


def release_for(version: str) -> TensorRTRelease:
    major, minor, _ = parse_version(version)
    for release in RELEASES:
        if (major, minor) >= release.since:
            return release
    raise UsageError(f"TensorRT {version} is older than 8.0, which edgekiln does not support")


@dataclass(frozen=True)
class TensorRTDevice:
    """One target's hardware facts and the TensorRT versions its OS images ship."""

    target: str
    description: str
    tensorrt: str
    """TensorRT version of the newest OS image (major.minor.patch); ``tensorrt_version`` overrides it."""
    oldest_tensorrt: str
    """Oldest TensorRT of the family: the default opset must parse there too."""
    tensorrt_range: str
    fast_fp16: bool
    fast_int8: bool
    dla_cores: int
    """DLA cores on the largest module of the family (0: none); trtexec refuses a core the module lacks."""
    python: tuple[int, int]
    """Python of the device OS, which runs verify_engine.py."""
    jetpack: str
    workspace_mb: int
    """Default builder workspace limit (MiB)."""
    trtexec: str = TRTEXEC

    @property
    def explicit_int8(self) -> bool:
        """QDQ models are the default INT8 path from TensorRT 8.5 on; older devices get a calibration cache."""
        return parse_version(self.tensorrt)[:2] >= (8, 5)

    @property
    def int8_modes(self) -> tuple[str, ...]:
        """INT8 delivery modes allowed here, the default first."""
        return ("qdq", "cache") if self.explicit_int8 else ("cache", "qdq")

    def release(self, version: str | None = None) -> TensorRTRelease:
        return release_for(version or self.tensorrt)

    def max_opset(self, version: str | None = None) -> int:
        """Newest opset to ship: for a stated version its parser's; else what the family's oldest release parses."""
        if version:
            return release_for(version).max_opset
        return min(release_for(self.tensorrt).max_opset, release_for(self.oldest_tensorrt).max_opset)


DEVICES: dict[str, TensorRTDevice] = {d.target: d for d in (
    TensorRTDevice("jetson-nano", "Jetson Nano (Maxwell GPU)", tensorrt="8.2.1", oldest_tensorrt="8.2.1",
                   tensorrt_range="8.2 (JetPack 4.6.1-4.6.x; JetPack 4.6.0 shipped 8.0.1)", fast_fp16=True,
                   fast_int8=False, dla_cores=0, python=(3, 6), jetpack="4.6.x", workspace_mb=512),
    TensorRTDevice("jetson-xavier", "Jetson Xavier NX/AGX (Volta GPU, 2 DLA cores)", tensorrt="8.5.2",
                   oldest_tensorrt="8.5.2", tensorrt_range="8.5 (JetPack 5.1.x)", fast_fp16=True, fast_int8=True,
                   dla_cores=2, python=(3, 8), jetpack="5.1.x", workspace_mb=2048),
    TensorRTDevice("jetson-orin", "Jetson Orin (Ampere GPU, up to 2 DLA cores; Orin Nano has none)",
                   tensorrt="10.3.0", oldest_tensorrt="8.6.2", tensorrt_range="8.6 (JetPack 6.0) to 10.3 (JetPack 6.1/6.2)",
                   fast_fp16=True, fast_int8=True, dla_cores=2, python=(3, 10), jetpack="6.x", workspace_mb=2048),
    TensorRTDevice("cuda", "NVIDIA desktop/server GPU", tensorrt="10.3.0", oldest_tensorrt="10.0.0",
                   tensorrt_range="10.x", fast_fp16=True, fast_int8=True, dla_cores=0, python=(3, 8), jetpack="-",
                   workspace_mb=4096),
)}

DEFAULT_TARGET = "cuda"


def device_for(target: str | None) -> TensorRTDevice:
    """The device record of a TensorRT target (``cuda`` when none is given)."""
    name = target or DEFAULT_TARGET
    if name not in DEVICES:
        raise UsageError(f"target '{name}' is not a TensorRT target; TensorRT targets: {', '.join(DEVICES)}")
    return DEVICES[name]


def parse_version(text: str) -> tuple[int, int, int]:
    """'8.2.1' or '8.2.1.8' -> (8, 2, 1); a bad string is a user error (it comes from --tensorrt-version)."""
    parts = str(text).strip().split(".")
    try:
        numbers = [int(p) for p in parts[:3]]
    except ValueError:
        numbers = []
    if len(numbers) < 2 or any(n < 0 for n in numbers):
        raise UsageError(f"TensorRT version '{text}' is not of the form MAJOR.MINOR[.PATCH] (e.g. 8.2.1)")
    while len(numbers) < 3:
        numbers.append(0)
    return numbers[0], numbers[1], numbers[2]


def cache_header_version(version: str) -> str:
    """NV_TENSORRT_VERSION as TensorRT writes it into a calibration cache header ('8.2.1' -> '8201')."""
    major, minor, patch = parse_version(version)
    scale = 10000 if major >= 10 else 1000
    return str(major * scale + minor * 100 + patch)
