"""ONNX -> TensorFlow SavedModel with onnx2tf, run in a child process.

Why a child process: importing onnx2tf changes the importing process for good
(it sets the recursion limit to 2**31-1, seeds every RNG, sets
``TF_USE_LEGACY_KERAS``), it calls ``sys.exit`` on some errors, and it prints
hundreds of lines. In a child, all of that stays contained, its whole output
becomes ``onnx2tf.log``, and its working directory can be a private temporary
folder. Known traps handled here:

- onnx2tf rewrites its input ``.onnx`` in place: it gets a copy in the folder.
- For 3-channel image models with a batch of at most 20 it loads a sample-image
  file from the working directory, and downloads it when absent (which hangs
  or fails offline): a seeded local file is written there first, and proxies
  point at a closed local port so any other download fails at once.
- Its own onnxsim step shells out to ``onnxsim`` three times (about 13 s even
  for a tiny model): edgekiln simplifies in-process once instead.
- Without a parameter-replacement file, a failed op starts its automatic
  replacement search, which re-converts the model dozens of times (14 minutes
  on YOLOv8n before failing anyway): it always gets one, empty unless
  edgekiln has replacements to make, so a failure is reported in seconds.
- Its per-op progress ("N / M") is printed at debug verbosity only: the child
  runs at debug, so progress and a stopped conversion can name the op.

The conversion is deterministic (same ONNX bytes, same SavedModel, byte-identical
``.tflite``), so a process converts each distinct model once (``ConversionCache``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from toolchain.errors import ConversionError, clip

log = logging.getLogger("edgekiln.tflite")

SAMPLE_FILE = "calibration_image_sample_data_20x128x128x3_float32.npy"
SAVED_MODEL_DIR = "saved_model"
REPLACEMENT_FILE = "replacements.json"
TIMEOUT_VARIABLE = "EDGEKILN_CONVERT_TIMEOUT"
_SCRIPT = "import json, sys\nimport onnx2tf\nonnx2tf.convert(**json.loads(sys.argv[1]))\n"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# onnx2tf's phase banners, reported as progress.
_PHASES = {"Model loaded": "onnx2tf: model loaded", "Model conversion started": "onnx2tf: converting ops",
           "saved_model output started": "onnx2tf: writing SavedModel",
           "Float32 tflite output complete": "onnx2tf: done"}
_OP_PROGRESS = re.compile(r"^INFO: (\d+) / (\d+)[ \t]*$", re.MULTILINE)
_OP_NAME = re.compile(r"onnx_op_type: (\S+) onnx_op_name: (\S+)")
DEFAULT_TIMEOUT_S = 900.0
"""A whole onnx2tf conversion (YOLOv8n: about 5 s of ops, 60 s in all on 2 cores)."""


def conversion_timeout() -> float:
    """The conversion budget in seconds, from ``EDGEKILN_CONVERT_TIMEOUT`` (read on each call)."""
    from toolchain.watchdog import env_seconds

    return env_seconds(TIMEOUT_VARIABLE, DEFAULT_TIMEOUT_S)


@dataclass
class SavedModel:
    path: Path
    seconds: float
    warnings: list[str] = field(default_factory=list)
    reused: bool = False


@dataclass
class _Entry:
    path: Path
    log_text: str
    warnings: list[str]


class ConversionCache:
    """onnx2tf results of this process, keyed by a hash of the exact ONNX bytes and the onnx2tf job.

    Building several precisions or targets of one model (``build --target rpi4 --target mcu``, the
    tests) would otherwise pay the whole onnx2tf run each time. Entries live in a private temporary
    folder that is removed with the process; the oldest are dropped beyond ``limit``.
    """

    def __init__(self, limit: int = 4) -> None:
        self.limit = limit
        self._root: tempfile.TemporaryDirectory | None = None
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None or not (entry.path / "saved_model.pb").is_file():
            self._entries.pop(key, None)
            return None
        self._entries.move_to_end(key)
        return entry

    def put(self, key: str, saved: Path, log_text: str, warnings: list[str]) -> _Entry:
        if self._root is None:
            self._root = tempfile.TemporaryDirectory(prefix="edgekiln-onnx2tf-cache-")
        target = Path(self._root.name) / key
        shutil.rmtree(target, ignore_errors=True)
        shutil.move(str(saved), target)
        self._entries[key] = _Entry(target, log_text, warnings)
        while len(self._entries) > self.limit:
            _, old = self._entries.popitem(last=False)
            shutil.rmtree(old.path, ignore_errors=True)
        return self._entries[key]


_CACHE = ConversionCache()


def cache_key(model: onnx.ModelProto, job: dict) -> str:
    from importlib.metadata import version

    digest = hashlib.sha256(model.SerializeToString(deterministic=True))
    digest.update(json.dumps({"onnx2tf": version("onnx2tf"), "job": job}, sort_keys=True).encode())
    return digest.hexdigest()[:32]


def _offline_env() -> dict[str, str]:
    env = dict(os.environ)
    closed = "http://127.0.0.1:9"  # the discard port: nothing listens, so a request fails immediately
    env.update({"HTTP_PROXY": closed, "HTTPS_PROXY": closed, "http_proxy": closed, "https_proxy": closed,
                "NO_PROXY": "", "no_proxy": "", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONHASHSEED": "0"})
    return env


def _write_sample_images(folder: Path) -> None:
    # onnx2tf only feeds these through both graphs to pick transposes; values in 0..1 like its own file.
    samples = np.random.default_rng(0).random((20, 128, 128, 3), dtype=np.float32)
    np.save(folder / SAMPLE_FILE, samples)


def _job(model_file: str) -> dict:
    return {"input_onnx_file_path": model_file, "output_folder_path": SAVED_MODEL_DIR,
            "output_signaturedefs": True,  # signature inputs keep the ONNX input names
            "not_use_onnxsim": True, "verbosity": "debug", "param_replacement_file": REPLACEMENT_FILE}


def _write_replacements(folder: Path, operations: list[dict]) -> None:
    (folder / REPLACEMENT_FILE).write_text(json.dumps({"format_version": 1, "operations": operations}))


def convert_to_saved_model(model: onnx.ModelProto, workdir: Path, log_path: Path, *,
                           timeout_s: float | None = None, cache: ConversionCache | None = _CACHE,
                           progress: Callable[[str], None] | None = None,
                           while_waiting: Callable[[], None] | None = None,
                           node_names: dict[str, str] | None = None) -> SavedModel:
    """Convert ``model`` to a SavedModel; the full onnx2tf output goes to ``log_path``.

    ``while_waiting`` runs in this process while the child converts (not when the result is reused).
    ``node_names`` maps node names of ``model`` back to the user's (errors name the user's nodes).

    ``workdir`` is the child's private working folder. The SavedModel path returned stays valid for
    the life of the process when ``cache`` is used, else as long as ``workdir``.
    """
    started = time.perf_counter()
    job = _job("model.onnx")
    key = cache_key(model, job)
    entry = cache.get(key) if cache is not None else None
    if entry is not None:
        log_path.write_text(f"[edgekiln] identical model already converted in this process; its log:\n"
                            f"{entry.log_text}")
        (progress or log.info)("onnx2tf: reusing this process's conversion of the same model")
        return SavedModel(entry.path, time.perf_counter() - started, entry.warnings, reused=True)
    onnx.save(model, str(workdir / "model.onnx"))
    _write_sample_images(workdir)
    _write_replacements(workdir, [])
    budget = conversion_timeout() if timeout_s is None else timeout_s
    command = [sys.executable, "-c", _SCRIPT, json.dumps(job)]
    returncode, timed_out = _run_logged(command, workdir, log_path, budget, progress or log.info, while_waiting)
    saved = workdir / SAVED_MODEL_DIR
    text = log_path.read_text(errors="replace")
    if timed_out:
        kept = _keep_failed_log(log_path)
        raise ConversionError(f"onnx2tf did not finish within {budget:g} s and was stopped "
                              f"({last_step(text, node_names)})",
                              hint=f"Raise the budget with {TIMEOUT_VARIABLE}=SECONDS; the onnx2tf log so far "
                                   f"is in {kept}.")
    if returncode != 0 or not (saved / "saved_model.pb").is_file():
        kept = _keep_failed_log(log_path)
        first_node_of: dict[str, str] = {}
        for node in model.graph.node:
            first_node_of.setdefault(node.op_type, node.name or node.output[0])
        raise ConversionError(f"onnx2tf could not convert the model: "
                              f"{failure_summary(text, returncode, node_names, first_node_of)}",
                              hint=f"The full onnx2tf log is in {kept}.")
    warnings = warning_lines(text)
    if cache is not None:
        saved = cache.put(key, saved, text, warnings).path
    return SavedModel(saved, time.perf_counter() - started, warnings)


def _run_logged(command: list[str], cwd: Path, log_path: Path, timeout_s: float,
                progress: Callable[[str], None],
                while_waiting: Callable[[], None] | None = None) -> tuple[int, bool]:
    """Run the child, copying its output to ``log_path``; ``while_waiting`` runs here meanwhile.
    Returns the exit code and whether the budget stopped it.

    A reader thread drains the child's output, so this thread is free for ``while_waiting`` (the
    build imports TensorFlow then, in parallel with the child's own import). Phase messages wait in
    a queue and are reported from this thread, never while ``while_waiting`` captures stderr.
    """
    phases: queue.Queue[str | None] = queue.Queue()
    with open(log_path, "w", encoding="utf-8") as sink:
        process = subprocess.Popen(command, cwd=cwd, env=_offline_env(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True, errors="replace")
        # A watchdog, not a per-line check: a hung converter may print nothing at all.
        watchdog = threading.Timer(timeout_s, process.kill)
        watchdog.start()
        reader = threading.Thread(target=_copy_output, args=(process, sink, phases), daemon=True)
        reader.start()
        try:
            if while_waiting is not None:
                while_waiting()
            while (phase := phases.get()) is not None:
                progress(phase)
        except BaseException:
            process.kill()
            raise
        finally:
            reader.join()
            returncode = process.wait()
            timed_out = not watchdog.is_alive() and returncode < 0
            watchdog.cancel()
        if timed_out:
            sink.write(f"\n[edgekiln] stopped onnx2tf after {timeout_s:.0f} s\n")
    return returncode, timed_out


def _copy_output(process: subprocess.Popen, sink: Any, phases: queue.Queue) -> None:
    try:
        for line in process.stdout or ():
            plain = _ANSI.sub("", line)
            sink.write(plain)
            phase = next((msg for marker, msg in _PHASES.items() if marker in plain), None)
            counted = _OP_PROGRESS.match(plain)
            if counted and _is_tenth(int(counted.group(1)), int(counted.group(2))):
                phase = f"onnx2tf: op {counted.group(1)} of {counted.group(2)}"
            if phase:
                phases.put(phase)
    finally:
        phases.put(None)


def _keep_failed_log(log_path: Path) -> Path:
    """Copy the log out of the staging folder, which is deleted on failure, so the error can point at it."""
    fd, name = tempfile.mkstemp(prefix="edgekiln-onnx2tf-", suffix=".log")
    os.close(fd)
    shutil.copyfile(log_path, name)
    return Path(name)


def _is_tenth(done: int, total: int) -> bool:
    """Report op progress in tenths, never once per op."""
    return total >= 20 and done * 10 // total != (done - 1) * 10 // total


def _last_op(text: str, node_names: dict[str, str] | None) -> tuple[str, str] | None:
    """The op onnx2tf was converting last (type, the user's node name), from its debug lines."""
    found = None
    for found in _OP_NAME.finditer(text):
        pass
    if found is None:
        return None
    return found.group(1), (node_names or {}).get(found.group(2), found.group(2))


def last_step(text: str, node_names: dict[str, str] | None = None) -> str:
    """What onnx2tf was doing when it was stopped, for the timeout line."""
    op = _last_op(text, node_names)
    counts = _OP_PROGRESS.findall(text)
    if op is not None and counts:
        return f"converting op {counts[-1][0]} of {counts[-1][1]}: {op[0]} node '{op[1]}'"
    phases = [msg for line in text.splitlines() for marker, msg in _PHASES.items() if marker in line]
    return phases[-1].removeprefix("onnx2tf: ") if phases else "starting up"


def failure_summary(text: str, returncode: int, node_names: dict[str, str] | None = None,
                    first_node_of: dict[str, str] | None = None) -> str:
    """One line naming what onnx2tf choked on (the op type and the user's node when it says so).

    ``first_node_of`` maps op types to the first node of that type: onnx2tf names no node when it lacks
    the op's converter altogether."""
    names = node_names or {}
    missing = re.search(r"ERROR:\s*(\S+) OP is not yet implemented", text)
    if missing and first_node_of and missing.group(1) in first_node_of:
        node = first_node_of[missing.group(1)]
        return f"onnx2tf has no converter for op {missing.group(1)} (node '{names.get(node, node)}')"
    failed_at = (re.search(r"ERROR:\s*onnx_op_name:\s*([^\s,]+)", text)
                 or re.search(r"Error occurred at ONNX operation:\s*(\S+)", text))
    last = _last_op(text, names)
    node = names.get(failed_at.group(1), failed_at.group(1)) if failed_at else last[1] if last else None
    where = f" (node '{node}')" if node else ""
    if missing:
        return f"onnx2tf has no converter for op {missing.group(1)}{where}"
    if last is not None:
        reason = _tensorflow_reason(text)
        return clip(f"op {last[0]}{where} failed to convert" + (f": {reason}" if reason else ""))
    errors = [line.strip() for line in text.splitlines()
              if line.strip().startswith(("ERROR:", "Error", "RuntimeError", "ValueError", "NotImplementedError",
                                          "KeyError", "TypeError"))
              and "trace log is below" not in line]
    if errors:
        return clip(errors[-1])
    return f"onnx2tf exited with code {returncode} without writing a SavedModel"


def _tensorflow_reason(text: str) -> str | None:
    """TensorFlow's own sentence about why an op could not be built (a shape mismatch, a bad name)."""
    for pattern in (r"(Dimension \d+ in both shapes must be equal, but are \d+ and \d+)",
                    r"('[^']*' is not a valid scope name)", r"(Shapes? .{0,80} (?:are )?(?:in)?compatible)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1)
    return None


def warning_lines(text: str, limit: int = 5) -> list[str]:
    """onnx2tf's own warnings, minus the ones about flatc (edgekiln maps names itself)."""
    found = [line.strip()[len("WARNING:"):].strip() for line in text.splitlines()
             if line.strip().startswith("WARNING:") and "flatc" not in line and "absl::InitializeLog" not in line]
    return list(dict.fromkeys(found))[:limit]
