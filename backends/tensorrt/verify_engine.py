#!/usr/bin/env python3
"""Check a TensorRT engine built on this device against the reference outputs edgekiln computed.

This file is copied into every TensorRT device bundle and runs there, on the
device's own Python: 3.6 on JetPack 4.6 (Jetson Nano), 3.8 on JetPack 5, 3.10
on JetPack 6. So it is written for Python 3.6 (no dataclasses, no walrus, no
``from __future__ import annotations``) and needs only tensorrt, numpy (1.13,
JetPack 4.6's, is enough) and pycuda or cuda-python. edgekiln imports it too:
the engine cache key and the engine runner are defined once, here.

    python3 verify_engine.py                # run the engine on the samples, compare with reference/
    python3 verify_engine.py --check-bundle # file hashes and calibration-cache header (build_engine.sh runs it)
    python3 verify_engine.py --print-key    # this device's engine cache key (build_engine.sh names the engine by it)
    python3 verify_engine.py --key-json     # the key's components, stored beside the engine
    python3 verify_engine.py --self-check   # compare the references with ONNX Runtime (no TensorRT needed)

Exit status: 0 all outputs pass, 1 an output fails, 2 the bundle or the device is not usable.
"""

import argparse
import ctypes
import hashlib
import json
import os
import sys

BUNDLE_FILE = "bundle.json"
BUNDLE_FORMAT = "edgekiln-tensorrt-bundle/1"
KEY_FORMAT = "edgekiln-engine-key/1"
ENGINE_DIR = "engines"
CUDA_ATTRIBUTE_CC_MAJOR = 75  # CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
CUDA_ATTRIBUTE_CC_MINOR = 76


class BundleError(Exception):
    """The bundle or this device cannot be used (exit status 2)."""


# ---- engine cache key (shared with edgekiln's backends.tensorrt.cache) -------------------------

def engine_key(source_sha256, tensorrt_version, gpu, build_options):
    """sha256 of everything that makes an engine: model bytes, TensorRT version, GPU and build options."""
    payload = {"format": KEY_FORMAT, "source_sha256": source_sha256, "tensorrt": tensorrt_version, "gpu": gpu,
               "build": build_options}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def engine_file_name(key):
    return "model-" + key[:16] + ".engine"


def sha256_file(path):
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sources_sha256(folder, names):
    """One hash over the files an engine is built from (the ONNX model, plus the calibration cache if any)."""
    digest = hashlib.sha256()
    for name in sorted(names):
        digest.update(name.encode("utf-8"))
        digest.update(sha256_file(os.path.join(folder, name)).encode("ascii"))
    return digest.hexdigest()


def cache_header_version(version):
    """NV_TENSORRT_VERSION as TensorRT writes it in calibration caches: '8.2.1.8' -> '8201', '10.3.0' -> '100300'."""
    parts = [int(p) for p in (str(version).split(".") + ["0", "0"])[:3]]
    scale = 10000 if parts[0] >= 10 else 1000
    return str(parts[0] * scale + parts[1] * 100 + parts[2])


def gpu_name(index=0):
    """'<CUDA device name> (sm_XY)' through the CUDA driver library, without pycuda or cuda-python."""
    library = None
    for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
        try:
            library = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if library is None:
        raise BundleError("no CUDA driver library (libcuda) on this machine")
    status = library.cuInit(0)
    if status != 0:
        raise BundleError("the CUDA driver did not initialise (CUresult %d): no usable GPU" % status)
    count = ctypes.c_int(0)
    library.cuDeviceGetCount(ctypes.byref(count))
    if count.value <= index:
        raise BundleError("CUDA reports %d GPU(s); GPU %d does not exist" % (count.value, index))
    device = ctypes.c_int(0)
    library.cuDeviceGet(ctypes.byref(device), index)
    buffer = ctypes.create_string_buffer(256)
    library.cuDeviceGetName(buffer, 256, device)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    library.cuDeviceGetAttribute(ctypes.byref(major), CUDA_ATTRIBUTE_CC_MAJOR, device)
    library.cuDeviceGetAttribute(ctypes.byref(minor), CUDA_ATTRIBUTE_CC_MINOR, device)
    return "%s (sm_%d%d)" % (buffer.value.decode("utf-8", "replace"), major.value, minor.value)


def tensorrt_version():
    try:
        import tensorrt
    except ImportError:
        raise BundleError("the tensorrt Python module is not installed (on JetPack: sudo apt-get install "
                          "python3-libnvinfer)")
    return tensorrt.__version__


def load_bundle(folder):
    path = os.path.join(folder, BUNDLE_FILE)
    try:
        with open(path) as handle:
            bundle = json.load(handle)
    except (IOError, OSError, ValueError) as exc:
        raise BundleError("cannot read %s: %s" % (path, exc))
    if bundle.get("format") != BUNDLE_FORMAT:
        raise BundleError("%s is not an %s file" % (path, BUNDLE_FORMAT))
    return bundle


def key_components(folder, bundle, trt_version=None, gpu=None):
    return {"source_sha256": sources_sha256(folder, bundle["engine_sources"]),
            "tensorrt_version": trt_version or tensorrt_version(), "gpu": gpu or gpu_name(),
            "build_options": bundle["build_options"]}


def current_key(folder, bundle):
    return engine_key(**key_components(folder, bundle))


# ---- bundle checks --------------------------------------------------------------------------

def check_files(folder, bundle):
    """Every file the bundle lists is present and unchanged (a truncated copy would build a wrong engine)."""
    problems = []
    for name, expected in sorted(bundle["files"].items()):
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            problems.append("missing " + name)
        elif sha256_file(path) != expected:
            problems.append("changed " + name)
    return problems


def check_calibration_cache(folder, bundle, trt_version):
    """The cache header must name this TensorRT: TensorRT skips a cache written for another version."""
    name = bundle.get("calibration_cache")
    if not name:
        return []
    with open(os.path.join(folder, name)) as handle:
        header = handle.readline().strip()
    expected = "TRT-%s-" % cache_header_version(trt_version)
    if not header.startswith(expected):
        return ["%s starts with '%s' but this TensorRT %s reads caches starting with '%s'; recompile with "
                "edgekiln for TensorRT %s" % (name, header, trt_version, expected, trt_version)]
    return []


# ---- numbers --------------------------------------------------------------------------------

def compare(reference, candidate, check):
    """Metrics of one output and whether it passes ``check`` (allclose with atol/rtol, or a minimum cosine)."""
    import numpy as np

    ref = np.asarray(reference)
    cand = np.asarray(candidate)
    if ref.shape != cand.shape:
        return {"passed": False, "problem": "shape %s, reference %s" % (cand.shape, ref.shape)}
    ref = ref.astype(np.float64).ravel()
    cand = cand.astype(np.float64).ravel()
    # NaN compared with NaN would "agree": any NaN/Inf fails, the reference's as a broken source model.
    for values, problem in ((ref, "the reference has %d NaN/Inf values (the source model is broken)"),
                            (cand, "has %d NaN/Inf values")):
        bad = int((~np.isfinite(values)).sum())
        if bad:
            return {"passed": False, "problem": problem % bad}
    if ref.size == 0:
        return {"passed": True, "max_abs": 0.0, "cosine": 1.0}
    diff = np.abs(ref - cand)
    norm = float(np.linalg.norm(ref) * np.linalg.norm(cand))
    cosine = float(np.dot(ref, cand) / norm) if norm > 0 else (1.0 if np.array_equal(ref, cand) else 0.0)
    if check["mode"] == "allclose":
        passed = bool(np.all(diff <= check["atol"] + check["rtol"] * np.abs(ref)))
    else:
        passed = cosine >= check["min_cosine"]
    return {"passed": passed, "max_abs": float(diff.max()), "cosine": cosine}


def load_samples(folder, bundle):
    """[(feed, references)] with arrays read from samples/ and reference/ (never unpickled)."""
    import numpy as np

    loaded = []
    for sample in bundle["samples"]:
        feed = dict((name, np.load(os.path.join(folder, path), allow_pickle=False))
                    for name, path in sample["inputs"].items())
        refs = dict((name, np.load(os.path.join(folder, path), allow_pickle=False))
                    for name, path in sample["outputs"].items())
        loaded.append((feed, refs))
    return loaded


def compare_all(samples, run, check):
    """Run every sample through ``run`` and compare each output; returns (all passed, report lines)."""
    lines, passed = [], True
    for index, (feed, refs) in enumerate(samples):
        outputs = run(feed)
        for name in sorted(refs):
            if name not in outputs:
                result = {"passed": False, "problem": "missing from the engine's outputs"}
            else:
                result = compare(refs[name], outputs[name], check)
            passed = passed and result["passed"]
            lines.append(describe(index, name, result))
    return passed, lines


def describe(index, name, result):
    verdict = "ok  " if result["passed"] else "FAIL"
    if "problem" in result:
        return "%s sample %d %s: %s" % (verdict, index, name, result["problem"])
    return "%s sample %d %s: max abs %.3g, cosine %.6f" % (verdict, index, name, result["max_abs"], result["cosine"])


# ---- CUDA buffers: cuda-python or pycuda, whichever is installed ---------------------------

class CudaPython(object):
    """Device buffers and a stream through cuda-python (CUDA 11+; JetPack 5/6 and desktops)."""

    name = "cuda-python"

    def __init__(self):
        try:
            from cuda.bindings import runtime as cudart
        except ImportError:
            from cuda import cudart  # cuda-python before 12.6
        self.rt = cudart
        self.stream = self._call(cudart.cudaStreamCreate(), "cudaStreamCreate")

    def _call(self, result, what):
        error = result[0]
        if int(error) != 0:
            raise RuntimeError("%s failed: %s" % (what, error))
        return result[1] if len(result) > 1 else None

    def alloc(self, nbytes):
        return int(self._call(self.rt.cudaMalloc(max(int(nbytes), 1)), "cudaMalloc"))

    def free(self, pointer):
        self.rt.cudaFree(pointer)

    def to_device(self, pointer, array):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._call(self.rt.cudaMemcpyAsync(pointer, array.ctypes.data, array.nbytes, kind, self.stream), "copy in")

    def to_host(self, array, pointer):
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._call(self.rt.cudaMemcpyAsync(array.ctypes.data, pointer, array.nbytes, kind, self.stream), "copy out")

    def stream_handle(self):
        return int(self.stream)

    def synchronize(self):
        self._call(self.rt.cudaStreamSynchronize(self.stream), "cudaStreamSynchronize")

    def close(self):
        self.rt.cudaStreamDestroy(self.stream)


class PyCuda(object):
    """Device buffers and a stream through pycuda (the only choice on CUDA 10.2, the Jetson Nano)."""

    name = "pycuda"

    def __init__(self):
        import pycuda.driver as cuda

        cuda.init()
        self.cuda = cuda
        self.context = cuda.Device(0).retain_primary_context()
        self.context.push()
        self.stream = cuda.Stream()
        self.allocations = {}

    def alloc(self, nbytes):
        allocation = self.cuda.mem_alloc(max(int(nbytes), 1))
        self.allocations[int(allocation)] = allocation
        return int(allocation)

    def free(self, pointer):
        self.allocations.pop(pointer).free()

    def to_device(self, pointer, array):
        self.cuda.memcpy_htod_async(pointer, array, self.stream)

    def to_host(self, array, pointer):
        self.cuda.memcpy_dtoh_async(array, pointer, self.stream)

    def stream_handle(self):
        return self.stream.handle

    def synchronize(self):
        self.stream.synchronize()

    def close(self):
        self.context.pop()


def open_cuda(preferred=None):
    """cuda-python if it imports and initialises, else pycuda; EDGEKILN_CUDA=pycuda|cuda-python forces one."""
    choice = preferred or os.environ.get("EDGEKILN_CUDA")
    kinds = [PyCuda] if choice == "pycuda" else [CudaPython] if choice == "cuda-python" else [CudaPython, PyCuda]
    reasons = []
    for kind in kinds:
        try:
            return kind()
        except Exception as exc:  # ImportError, or a driver error at initialisation
            reasons.append("%s: %s: %s" % (kind.name, type(exc).__name__, exc))
    raise BundleError("no CUDA Python binding works here (" + "; ".join(reasons) + "); install pycuda "
                      "(Jetson Nano: pip3 install pycuda) or cuda-python")


# ---- TensorRT execution: name-based API (TensorRT >= 8.5) or bindings (8.2) ----------------

class TensorIO(object):
    """TensorRT 8.5+ name-based I/O (the only API from TensorRT 10 on)."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self.pointers = {}

    def is_input(self, name):
        return self.engine.get_tensor_mode(name) == self.trt.TensorIOMode.INPUT

    def dtype(self, name):
        return self.trt.nptype(self.engine.get_tensor_dtype(name))

    def set_shape(self, name, shape):
        if -1 in tuple(self.engine.get_tensor_shape(name)):
            self.context.set_input_shape(name, tuple(shape))

    def shape(self, name):
        return tuple(self.context.get_tensor_shape(name))

    def bind(self, name, pointer):
        self.context.set_tensor_address(name, pointer)

    def execute(self, stream):
        return self.context.execute_async_v3(stream)


class BindingIO(object):
    """TensorRT 8.2-8.4 binding-index I/O (removed in TensorRT 10)."""

    def __init__(self, trt, engine, context):
        self.trt, self.engine, self.context = trt, engine, context
        self.names = [engine.get_binding_name(i) for i in range(engine.num_bindings)]
        self.pointers = [0] * len(self.names)

    def _index(self, name):
        return self.names.index(name)

    def is_input(self, name):
        return self.engine.binding_is_input(self._index(name))

    def dtype(self, name):
        return self.trt.nptype(self.engine.get_binding_dtype(self._index(name)))

    def set_shape(self, name, shape):
        index = self._index(name)
        if -1 in tuple(self.engine.get_binding_shape(index)):
            self.context.set_binding_shape(index, tuple(shape))

    def shape(self, name):
        return tuple(self.context.get_binding_shape(self._index(name)))

    def bind(self, name, pointer):
        self.pointers[self._index(name)] = pointer

    def execute(self, stream):
        return self.context.execute_async_v2(bindings=self.pointers, stream_handle=stream)


class EngineSession(object):
    """A deserialized engine that runs numpy feeds keyed by input name and returns outputs by name."""

    def __init__(self, engine_path, cuda=None):
        import tensorrt as trt

        self.trt = trt
        self.cuda = cuda or open_cuda()
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        with open(engine_path, "rb") as handle:
            self.engine = self.runtime.deserialize_cuda_engine(handle.read())
        if self.engine is None:
            raise BundleError("TensorRT %s could not load %s (built by another TensorRT version or for "
                              "another GPU?)" % (trt.__version__, engine_path))
        self.context = self.engine.create_execution_context()
        kind = TensorIO if hasattr(self.engine, "num_io_tensors") else BindingIO
        self.io = kind(trt, self.engine, self.context)
        self.inputs = [n for n in self.io.names if self.io.is_input(n)]
        self.outputs = [n for n in self.io.names if not self.io.is_input(n)]

    def run(self, feed):
        import numpy as np

        missing = [n for n in self.inputs if n not in feed]
        if missing:
            raise ValueError("missing inputs: " + ", ".join(missing))
        arrays = {}
        for name in self.inputs:
            arrays[name] = np.ascontiguousarray(feed[name], dtype=self.io.dtype(name))
            self.io.set_shape(name, arrays[name].shape)
        for name in self.outputs:
            arrays[name] = np.empty(self.io.shape(name), dtype=self.io.dtype(name))
        pointers = {}
        try:
            for name in self.io.names:
                pointers[name] = self.cuda.alloc(arrays[name].nbytes)
                self.io.bind(name, pointers[name])
            for name in self.inputs:
                self.cuda.to_device(pointers[name], arrays[name])
            if not self.io.execute(self.cuda.stream_handle()):
                raise RuntimeError("TensorRT failed to execute the engine")
            for name in self.outputs:
                self.cuda.to_host(arrays[name], pointers[name])
            self.cuda.synchronize()
        finally:
            for pointer in pointers.values():
                self.cuda.free(pointer)
        return dict((name, arrays[name]) for name in self.outputs)

    def close(self):
        self.context = None
        self.engine = None
        self.cuda.close()


# ---- command line ---------------------------------------------------------------------------

def verify(folder, bundle):
    problems = check_files(folder, bundle)
    if problems:
        raise BundleError("the bundle does not match bundle.json: " + ", ".join(problems))
    key = current_key(folder, bundle)
    engine = os.path.join(folder, ENGINE_DIR, engine_file_name(key))
    if not os.path.isfile(engine):
        raise BundleError("no engine for this device, TensorRT and bundle (expected %s); run ./build_engine.sh "
                          "first" % engine)
    session = EngineSession(engine)
    try:
        print("engine %s (%s, TensorRT %s, %s)" % (engine, bundle["precision"], session.trt.__version__,
                                                   session.cuda.name))
        return compare_all(load_samples(folder, bundle), session.run, bundle["check"])
    finally:
        session.close()


def self_check(folder, bundle):
    """The references against ONNX Runtime running the engine's source model: proves the bundle reproduces."""
    try:
        import onnxruntime
    except ImportError:
        raise BundleError("--self-check needs onnxruntime (it runs the ONNX model instead of an engine)")
    problems = check_files(folder, bundle)
    if problems:
        raise BundleError("the bundle does not match bundle.json: " + ", ".join(problems))
    session = onnxruntime.InferenceSession(os.path.join(folder, bundle["reference_model"]),
                                           providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed):
        return dict(zip(names, session.run(names, feed)))

    return compare_all(load_samples(folder, bundle), run, bundle["check"])


def main(argv=None):
    parser = argparse.ArgumentParser(description="Check a TensorRT engine against edgekiln's reference outputs.")
    parser.add_argument("--bundle", default=os.path.dirname(os.path.abspath(__file__)), help="bundle folder")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check-bundle", action="store_true", help="check file hashes and the calibration cache")
    mode.add_argument("--print-key", action="store_true", help="print this device's engine cache key")
    mode.add_argument("--key-json", action="store_true", help="print the key's components as JSON")
    mode.add_argument("--self-check", action="store_true", help="compare the references with ONNX Runtime")
    args = parser.parse_args(argv)
    try:
        bundle = load_bundle(args.bundle)
        if args.check_bundle:
            problems = check_files(args.bundle, bundle)
            if bundle.get("calibration_cache") and not problems:
                problems += check_calibration_cache(args.bundle, bundle, tensorrt_version())
            for problem in problems:
                print("bundle: " + problem, file=sys.stderr)
            return 2 if problems else 0
        if args.print_key or args.key_json:
            components = key_components(args.bundle, bundle)
            if args.key_json:
                components["key"] = engine_key(**components)
                print(json.dumps(components, indent=1, sort_keys=True))
            else:
                print(engine_key(**components))
            return 0
        passed, lines = self_check(args.bundle, bundle) if args.self_check else verify(args.bundle, bundle)
    except BundleError as exc:
        print("error: %s" % exc, file=sys.stderr)
        return 2
    for line in lines:
        print(line)
    print("PASSED" if passed else "FAILED")
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
