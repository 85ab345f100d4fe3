"""Hostile and broken input, table-driven: every case gets one clear line, and leaves nothing behind.

Each row runs the real CLI entry point and asserts: a non-zero exit, exactly one `error:` line
(no traceback), nothing in the output folder, nothing in the calibration cache, and no trace of
code having run from a pickle. Also here: a full disk, and a model over protobuf's 2 GiB limit.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from PIL import Image

from helpers import (assert_one_line_error, files_in, make_onnx_model, make_single_layer_model, run_main,
                     with_weight, write_images)


class _Payload:
    """Unpickling this creates the marker file: proof that code from the file ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _save(model: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


def _npz(path: Path, shape: tuple[int, ...], data: bytes = bytes(16), member: str = "x") -> Path:
    """An .npz whose one member's header declares ``shape`` (float32) but holds ``data``."""
    import io

    from numpy.lib import format as npy_format

    buffer = io.BytesIO()
    npy_format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": shape})
    buffer.write(data)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr(f"{member}.npy", buffer.getvalue())
    return path


def _keras_without_units(path: Path) -> Path:
    """A Keras model whose Dense layer lacks its required ``units``: Keras' error nests the reason 3 deep."""
    import json

    dense = {"module": "keras.layers", "class_name": "Dense", "config": {"name": "head", "activation": "linear"}}
    config = {"module": "keras", "class_name": "Sequential", "registered_name": None, "config": {"name": "seq", "layers": [
        {"module": "keras.layers", "class_name": "InputLayer",
         "config": {"batch_shape": [None, 4], "dtype": "float32", "name": "in"}}, dense]}}
    if path.suffix == ".keras":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("config.json", json.dumps(config))
            archive.writestr("metadata.json", json.dumps({"keras_version": "3.5.0"}))
    else:
        import h5py

        with h5py.File(path, "w") as handle:
            handle.attrs["model_config"] = json.dumps(config)
            handle.attrs["keras_version"] = "3.5.0"
            handle.create_group("model_weights")
    return path


def _odd_onnx_models(folder: Path) -> dict[str, Path]:
    """ONNX files that parse but lie or ask for what no runtime has, and model paths that are not files."""
    from onnx import helper, numpy_helper

    def one_node(op: str, elem: int, domain: str = "") -> onnx.ModelProto:
        graph = helper.make_graph([helper.make_node(op, ["x"], ["y"], domain=domain)], "g",
                                  [helper.make_tensor_value_info("x", elem, [1, 4])],
                                  [helper.make_tensor_value_info("y", elem, [1, 4])])
        opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid(domain, 1)] if domain else [])
        model = helper.make_model(graph, opset_imports=opsets)
        model.ir_version = 8
        return model

    lying, future, ghost, silent = (make_onnx_model() for _ in range(4))
    lying.graph.initializer[2].dims[:] = [100000, 100000]  # fc_w declares 40 GB, holds 10 KB
    future.ir_version = 99
    ghost.graph.output[0].name = "ghost"
    del silent.graph.output[:]
    models = {"lying_init": lying, "ir99": future, "ghost_out": ghost, "no_outputs": silent,
              "foreign_op": one_node("Frob", onnx.TensorProto.FLOAT, "com.example"),
              "string_input": one_node("Identity", onnx.TensorProto.STRING)}
    files = {name: _save(model, folder / f"{name}.onnx") for name, model in models.items()}
    files["tensor_proto"] = folder / "tensor_proto.onnx"  # a valid protobuf, but a TensorProto
    files["tensor_proto"].write_bytes(numpy_helper.from_array(np.ones(4, np.float32), "t").SerializeToString())
    files["fifo"] = folder / "fifo.onnx"
    os.mkfifo(files["fifo"])  # reading it would block for ever
    files["dev_zero"] = folder / "zero.onnx"
    files["dev_zero"].symlink_to("/dev/zero")  # reading it would never end
    files["complex_npy"] = folder / "complex.npy"
    np.save(files["complex_npy"], np.ones((1, 1, 8, 8), np.complex64))
    return files


def _onnx_with_external_data(folder: Path, location: str) -> Path:
    model = make_onnx_model()
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "144")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    path.write_bytes(model.SerializeToString())
    return path


@pytest.fixture
def hostile(tmp_path: Path, bad_inputs: dict[str, Path], tiny_onnx: Path) -> dict[str, str]:
    """Every hostile file and folder the table refers to, by name."""
    rng = np.random.default_rng(7)
    files: dict[str, Path] = {k.replace(".", "_"): v for k, v in bad_inputs.items()}
    for suffix in ("onnx", "pt", "pt2", "keras", "h5", "tflite"):
        path = tmp_path / f"random.{suffix}"
        path.write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
        files[f"random_{suffix}"] = path
    data = tiny_onnx.read_bytes()
    for cut in (16, len(data) // 2, len(data) - 5):
        files[f"cut{cut}"] = tmp_path / f"cut{cut}.onnx"
        files[f"cut{cut}"].write_bytes(data[:cut])
    files["cut_a"], files["cut_b"], files["cut_c"] = (files[f"cut{c}"] for c in (16, len(data) // 2, len(data) - 5))
    dangling = make_onnx_model()
    dangling.graph.node[1].input[0] = "nowhere"
    files["dangling"] = tmp_path / "dangling.onnx"
    files["dangling"].write_bytes(dangling.SerializeToString())
    # issue #17, defect 2: NaN compared with NaN used to "agree" (cosine 1.000000, ok)
    files["nan_weight"] = _save(with_weight(make_onnx_model(), "fc_b", np.nan), tmp_path / "nan_weight.onnx")
    files["inf_weight"] = _save(with_weight(make_onnx_model(), "w", np.inf), tmp_path / "inf_weight.onnx")
    files["dead"] = _save(with_weight(with_weight(make_onnx_model(), "w", scale=0.0), "b", scale=0.0),
                          tmp_path / "dead.onnx")  # Conv weights zeroed: the output is fc_b whatever the input
    files["keras_no_units"] = _keras_without_units(tmp_path / "no_units.keras")
    files["h5_no_units"] = _keras_without_units(tmp_path / "no_units.h5")
    files.update(_odd_onnx_models(tmp_path))
    files["ext_missing"] = _onnx_with_external_data(tmp_path / "ext_missing", "weights.bin")
    (tmp_path / "secret.bin").write_bytes(bytes(144))
    files["ext_outside"] = _onnx_with_external_data(tmp_path / "ext_outside", "../secret.bin")
    files["zip_other"] = tmp_path / "other.pt"
    with zipfile.ZipFile(files["zip_other"], "w") as archive:
        archive.writestr("notes/readme.txt", "not a model")
    files["marker"] = tmp_path / "pwned"
    files["evil"] = tmp_path / "evil.pth"
    files["evil"].write_bytes(b"\x80\x04" + pickle.dumps({"model": _Payload(files["marker"])})[2:])
    folders = {name: tmp_path / "calib" / name for name in ("empty", "text_only", "zero_jpeg", "bomb", "loop")}
    for folder in folders.values():
        folder.mkdir(parents=True)
    (folders["text_only"] / "a.txt").write_text("x")
    (folders["text_only"] / "b.csv").write_text("1,2")
    (folders["zero_jpeg"] / "zero.jpg").write_bytes(b"")
    Image.new("1", (20000, 20000)).save(folders["bomb"] / "bomb.png")  # 400 M pixels, a few KB on disk
    (folders["loop"] / "self").symlink_to(folders["loop"], target_is_directory=True)
    for name in ("link_root", "deep"):
        write_images(tmp_path / "calib" / name, count=3)
    (tmp_path / "calib" / "link_root" / "everything").symlink_to("/", target_is_directory=True)  # issue #17
    write_images(tmp_path.joinpath("calib", "deep", *["d"] * 33), count=1)  # past the 32-level limit
    files.update({f"calib_{k}": v for k, v in folders.items()})
    files.update(calib_link_root=tmp_path / "calib" / "link_root", calib_deep=tmp_path / "calib" / "deep")
    files["three_images"] = write_images(tmp_path / "calib" / "three", count=3)
    files["images"] = write_images(tmp_path / "calib" / "images", count=8)
    files["flat_labels"] = write_images(tmp_path / "calib" / "flat", count=4)  # images but no class folders
    np.save(tmp_path / "x.npy", np.zeros((1, 1, 8, 8), np.float32))
    files["npy"] = tmp_path / "x.npy"
    # .npz members (issue #17): headers that lie, ask for 111 GiB, or hold a pickle
    files["npz_lying"] = _npz(tmp_path / "lying.npz", (20, 1, 8, 8))
    files["npz_huge"] = _npz(tmp_path / "huge.npz", (1, 3, 100000, 100000))
    files["npz_as_npy"] = _npz(tmp_path / "zip_inside.npy", (1, 3, 100000, 100000))
    files["npz_pickle"] = tmp_path / "pickle.npz"
    np.savez(files["npz_pickle"], x=np.array([_Payload(files["marker"])] * 20, dtype=object))
    recipes = {"recipe_unknown.yaml": "targets: [x86]\ncalib_sise: 3\n",
               "recipe_type.toml": "targets = ['x86']\nmax-drop = 'lots'\n",
               "recipe_duplicate.yaml": "targets: [x86]\nholdout: 3\nholdout: 4\n",
               "recipe_syntax.yaml": "targets: [x86\n",
               "recipe_empty.yaml": "# nothing\n",
               "recipe_code.yaml": f"targets: !!python/object/apply:pathlib.Path.touch ['{files['marker']}']\n",
               "recipe_target.yaml": "targets: [x86, toaster]\n",
               "recipe.ini": "[build]\ntargets = x86\n"}
    for name, text in recipes.items():
        (tmp_path / name).write_text(text)
        files[name.replace(".", "_")] = tmp_path / name
    names = {k: str(v) for k, v in files.items()}
    names.update(missing=str(tmp_path / "missing.onnx"), tiny=str(tiny_onnx), out=str(tmp_path / "out"),
                 cache=str(tmp_path / "cache"))
    (tmp_path / "out").mkdir()
    (tmp_path / "cache").mkdir()
    return names


CASES = [
    (["convert", "{missing}", "-o", "{out}/m.onnx"], ["does not exist"]),
    (["convert", "{folder}", "-o", "{out}/m.onnx"], ["not a TensorFlow SavedModel"]),
    (["convert", "{empty_onnx}", "-o", "{out}/m.onnx"], ["is empty"]),
    (["convert", "{corrupt_onnx}", "-o", "{out}/m.onnx"], ["not a valid ONNX model"]),
    (["convert", "{corrupt_pt}", "-o", "{out}/m.onnx", "--input", "1x3"], ["not a readable PyTorch file"]),
    (["convert", "{corrupt_h5}", "-o", "{out}/m.onnx"], ["not a readable HDF5 file"]),
    (["convert", "{notes_txt}", "-o", "{out}/m.onnx"], ["cannot tell what kind of model"]),
    (["convert", "{model_xyz}", "-o", "{out}/m.onnx"], ["unknown extension"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:1xAx-3"], ["bad --input"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:2x1x8x8"], ["fixes it to 1"]),
    (["convert", "{tiny}", "-o", "{out}/m.txt"], ["must end in .onnx"]),
    (["convert", "{tiny}", "-o", "{out}/no/such/dir/m.onnx"], ["does not exist"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--target", "toaster"], ["unknown target 'toaster'"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--opset", "99"], ["outside the supported range"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--weights", "{tiny}"], ["--weights needs --model-class"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--calib", "{folder}"], ["no images"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--preprocess", "sepia"], ["unknown preprocessing preset"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--backend", "coreml"], ["unknown backend 'coreml'"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--precision", "int3"], ["does not support precision"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--threads", "0"], ["--threads must be >= 1"]),
    (["run", "{tiny}", "--input", "{missing}"], ["does not exist"]),
    (["run", "{folder}"], ["not an edgekiln artifact"]),
    (["bench", "{tiny}", "--iterations", "0"], ["--iterations"]),
    (["inspect", "{corrupt_onnx}"], ["not a valid ONNX model"]),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx"], ["nothing to do"]),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx", "--fp16", "--dynamic-int8"], ["choose one"]),
    (["calibrate", "{tiny}", "-o", "{out}/m.onnx"], ["Missing option '--calib'"]),
    (["calibrate", "{tiny}", "--calib", "{folder}", "-o", "{out}/m.onnx"], ["no images"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--calib-size", "0"], ["--calib-size"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--calib-size", "999"], ["--calib-size"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--max-drop", "-1"], ["--max-drop"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/m.onnx", "--target", "toaster"], ["unknown target"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--precision", "int8"], ["needs calibration samples"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--exporter", "magic"], ["--help"]),
    (["frobnicate"], ["No such command"]),
    # model files
    (["convert", "{random_onnx}", "-o", "{out}/m.onnx"], ["not a valid ONNX model"]),
    (["convert", "{random_pt}", "-o", "{out}/m.onnx", "--input", "1x3"], ["PyTorch"]),
    (["convert", "{random_pt2}", "-o", "{out}/m.onnx"], []),
    (["convert", "{random_keras}", "-o", "{out}/m.onnx"], []),
    (["convert", "{random_h5}", "-o", "{out}/m.onnx"], []),
    (["inspect", "{random_tflite}"], []),
    (["convert", "{cut_a}", "-o", "{out}/m.onnx"], []),
    (["convert", "{cut_b}", "-o", "{out}/m.onnx"], []),
    (["convert", "{cut_c}", "-o", "{out}/m.onnx"], []),
    (["convert", "{dangling}", "-o", "{out}/m.onnx"], ["ONNX checker"]),
    (["convert", "{ext_missing}", "-o", "{out}/m.onnx"], ["missing"]),
    (["convert", "{ext_outside}", "-o", "{out}/m.onnx"], ["outside the model's folder"]),
    (["convert", "{zip_other}", "-o", "{out}/m.onnx", "--input", "1x3"], ["not a PyTorch file"]),
    (["convert", "{evil}", "-o", "{out}/m.onnx", "--input", "1x3"], ["--trust-pickle"]),
    # calibration folders and samples
    (["calibrate", "{tiny}", "--calib", "{calib_empty}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], []),
    (["calibrate", "{tiny}", "--calib", "{calib_text_only}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], []),
    (["calibrate", "{tiny}", "--calib", "{calib_zero_jpeg}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], []),
    (["calibrate", "{tiny}", "--calib", "{calib_bomb}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], []),
    (["calibrate", "{tiny}", "--calib", "{calib_loop}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"], []),
    (["calibrate", "{tiny}", "--calib", "{three_images}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}",
      "--calib-size", "10"], ["--calib-size"]),
    (["calibrate", "{tiny}", "--calib", "{calib_link_root}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"],
     ["everything", "points to '/'", "EDGEKILN_CALIB_FOLLOW_LINKS=1"]),
    (["calibrate", "{tiny}", "--calib", "{calib_deep}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"],
     ["more than 32 folders deep"]),
    (["compile", "{tiny}", "--precision", "int8", "--calib", "{calib_empty}", "-o", "{out}/art",
      "--cache-dir", "{cache}"], []),
    # options
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:"], ["bad --input"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", ":1x1x8x8"], ["bad --input"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:1x0x8x8"], ["dimension 0"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "x:1x1x8x8:float99"], ["dtype"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--input", "1x1x8x8", "--input", "1x1x8x8"], ["name their input"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--model-kwargs", "{{not json"], []),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx", "--lowrank", "--lowrank-energy", "1.5"], []),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx", "--lowrank", "--lowrank-mode", "budget"], []),
    (["optimize", "{tiny}", "-o", "{out}/m.onnx", "--lowrank", "--lowrank-rank", "fc"], ["NODE=RANK"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--dla-core", "0"], ["applies to the tensorrt backend"]),
    (["compile", "{tiny}", "-o", "{out}/art", "--flash-kb", "64"], ["applies to the tflite backend"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}",
      "--tensorrt-cache", "{out}/no/such/dir/trt.cache"], ["does not exist"]),
    (["bench", "{tiny}", "--batch", "0"], ["--batch"]),
    (["run", "{tiny}", "--input", "nope={npy}"], ["no input 'nope'"]),
    (["eval", "{tiny}", "--labels", "{flat_labels}"], []),
    (["compare", "{tiny}"], ["at least two"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "toaster"], ["unknown target"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "x86:int4"], ["unknown precision 'int4'"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "x86", "--target", "x86:fp32"], ["listed twice"]),
    (["build", "{tiny}", "-o", "{out}/b", "--calib", "{missing}", "--cache-dir", "{cache}"], ["does not exist"]),
    (["build", "{tiny}", "-o", "{out}/b", "--labels", "{flat_labels}", "--cache-dir", "{cache}"], ["class"]),
    (["build", "{tiny}", "-o", "{out}/b", "--bench-iterations", "-1"], ["--bench-iterations"]),
    (["build", "{missing}", "-o", "{out}/b", "--dry-run", "--cache-dir", "{cache}"], ["does not exist"]),
    (["build", "-c", "{recipe_unknown_yaml}", "-o", "{out}/b"], ["recipe_unknown.yaml:2:", "calib_sise", "calib-size"]),
    (["build", "-c", "{recipe_type_toml}", "-o", "{out}/b"], ["recipe_type.toml:2:", "max-drop"]),
    (["build", "-c", "{recipe_duplicate_yaml}", "-o", "{out}/b"], ["recipe_duplicate.yaml:3:", "holdout"]),
    (["build", "-c", "{recipe_syntax_yaml}", "-o", "{out}/b"], ["recipe_syntax.yaml:"]),
    (["build", "-c", "{recipe_empty_yaml}", "-o", "{out}/b"], ["empty"]),
    (["build", "-c", "{recipe_code_yaml}", "-o", "{out}/b"], ["recipe_code.yaml:1:"]),
    (["build", "-c", "{recipe_target_yaml}", "-o", "{out}/b"], ["recipe_target.yaml:1:", "toaster"]),
    (["build", "-c", "{recipe_ini}", "-o", "{out}/b"], [".yaml", ".toml"]),
    (["build", "-c", "{missing}", "-o", "{out}/b"], ["no such recipe file"]),
    # build: every target's needs and the sample split are checked before the first stage
    (["build", "{tiny}", "-o", "{out}/b", "--target", "rpi4", "--cache-dir", "{cache}"], ["target 'rpi4' builds INT8"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "x86:int8", "--calib", "{three_images}", "--cache-dir",
      "{cache}"], ["only 3 images", "at least 16"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "x86:int8", "--calib", "{images}", "--calib-size", "6",
      "--holdout", "4", "--cache-dir", "{cache}"], ["--calib-size 6 plus --holdout 4"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "x86:int8", "--calib", "{npy}", "--cache-dir", "{cache}"],
     ["only 1 samples"]),
    (["build", "{tiny}", "-o", "{out}/b", "--lowrank", "--lowrank-mode", "budget", "--cache-dir", "{cache}"],
     ["--lowrank-mode budget needs calibration data"]),
    (["calibrate", "{tiny}", "--calib", "{images}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"],
     ["only 8 images", "at least 16"]),
    (["inspect", "{random_pt}"], ["is a PyTorch file", "edgekiln convert"]),
    (["compare", "{tiny}", "{tiny}", "--calib", "{images}", "--preprocess", "sepia"], ["unknown preprocessing preset"]),
    # messages that were cut (issue #17, defect 7): "...input 'nowhere' of node: ." and Keras' outer sentence only
    (["inspect", "{dangling}"], ["input 'nowhere' of an unnamed Relu node is not output of any previous nodes"]),
    (["convert", "{keras_no_units}", "-o", "{out}/m.onnx"],
     ["layer 'head' (Dense)", "missing 1 required positional argument: 'units'"]),
    (["convert", "{h5_no_units}", "-o", "{out}/m.onnx"],
     ["layer 'head' (Dense)", "missing 1 required positional argument: 'units'"]),
    # model files that parse but lie, name what no runtime has, or are not files at all (issue #17)
    (["convert", "{lying_init}", "-o", "{out}/m.onnx"], ["fc_w", "too small for the declared shape"]),
    (["inspect", "{lying_init}"], ["fc_w", "too small for the declared shape"]),
    (["convert", "{ir99}", "-o", "{out}/m.onnx"], ["ir_version 99"]),
    (["convert", "{ghost_out}", "-o", "{out}/m.onnx"], ["'ghost' is not an output of any node"]),
    (["convert", "{no_outputs}", "-o", "{out}/m.onnx"], ["declares no graph outputs"]),
    (["convert", "{foreign_op}", "-o", "{out}/m.onnx"], ["com.example:Frob", "not a registered"]),
    (["convert", "{string_input}", "-o", "{out}/m.onnx"], ["input 'x' takes strings", "--no-verify"]),
    (["convert", "{tensor_proto}", "-o", "{out}/m.onnx"], ["not a valid ONNX model"]),
    (["convert", "{fifo}", "-o", "{out}/m.onnx"], ["is not a regular file"]),
    (["inspect", "{dev_zero}"], ["is not a regular file"]),
    (["run", "{tiny}", "--input", "{complex_npy}"], ["complex64", "input 'x' (float32)"]),
    # .npz inputs and samples: every member's header is read before anything is allocated (issue #17)
    (["run", "{tiny}", "--input", "{npz_lying}"], ["lying.npz", "member 'x'", "holds only 16 bytes"]),
    (["run", "{tiny}", "--input", "{npz_huge}"], ["member 'x'", "(1, 3, 100000, 100000)", "more than the 1 GiB"]),
    (["run", "{tiny}", "--input", "x={npz_as_npy}"], ["zip_inside.npy", "more than the 1 GiB"]),
    (["run", "{tiny}", "--input", "{npz_pickle}"], ["member 'x'", "pickled data"]),
    (["calibrate", "{tiny}", "--calib", "{npz_lying}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"],
     ["member 'x'", "holds only 16 bytes"]),
    (["calibrate", "{tiny}", "--calib", "{npz_pickle}", "-o", "{out}/q.onnx", "--cache-dir", "{cache}"],
     ["pickled data"]),
    (["build", "{tiny}", "-o", "{out}/b", "--target", "x86:int8", "--calib", "{npz_huge}", "--cache-dir", "{cache}"],
     ["more than the 1 GiB"]),
    (["convert", "{tiny}", "-o", "{out}/m.onnx", "--calib", "{npz_lying}"], ["holds only 16 bytes"]),
    # non-finite and constant outputs (issue #17, defect 2): each used to pass as "cosine 1.000000, ok"
    (["convert", "{nan_weight}", "-o", "{out}/m.onnx"], ["output 'y' has 2 NaN values", "the source model is broken"]),
    (["convert", "{inf_weight}", "-o", "{out}/m.onnx"], ["NaN", "the source model is broken"]),
    (["optimize", "{nan_weight}", "-o", "{out}/m.onnx", "--simplify"], ["NaN values", "the source model is broken"]),
    (["optimize", "{nan_weight}", "-o", "{out}/m.onnx", "--fp16"], ["NaN values", "the source model is broken"]),
    (["compile", "{nan_weight}", "-o", "{out}/art"], ["NaN values", "the source model is broken"]),
    (["build", "{nan_weight}", "-o", "{out}/b", "--target", "x86", "--cache-dir", "{cache}"],
     ["NaN values", "the source model is broken"]),
    (["convert", "{dead}", "-o", "{out}/m.onnx", "--calib", "{images}"], ["same output 'y' for all 8 images"]),
    (["compare", "{nan_weight}", "{tiny}"], ["NaN values", "nan_weight.onnx"]),
    (["compare", "{tiny}", "{nan_weight}"], ["NaN values", "nan_weight.onnx"]),
]


def _case_id(index: int, args: list[str]) -> str:
    """The row number, the command and the files it names, so ``-k nan_weight`` picks rows."""
    names = [n for n in re.findall(r"\{(\w+)\}", " ".join(args)) if n not in ("out", "cache")]
    return "-".join([f"{index:03d}", args[0], *names[:2]])


@pytest.mark.parametrize("args, fragments", CASES, ids=[_case_id(i, args) for i, (args, _) in enumerate(CASES)])
def test_hostile_input_gets_one_line_and_leaves_nothing(args, fragments, hostile, capsys):
    code, _, err = run_main([a.format(**hostile) for a in args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert files_in(Path(hostile["out"])) == [], "nothing may be written to the output folder"
    assert files_in(Path(hostile["cache"])) == [], "nothing may be cached from a failed run"
    assert not Path(hostile["marker"]).exists(), "no code from a pickle may run"


def test_the_table_has_at_least_120_cases():
    assert len(CASES) >= 120


@pytest.fixture
def places(tmp_path: Path, tiny_onnx: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """An existing build folder and artifact (each holding a model), and an empty tmpfs mount point."""
    for folder, marker in (("build", "report.json"), ("art", "manifest.json")):
        (tmp_path / folder / "sub").mkdir(parents=True)
        (tmp_path / folder / marker).write_text("{}")
        shutil.copyfile(tiny_onnx, tmp_path / folder / "model.onnx")
    write_images(tmp_path / "build" / "images", count=20)
    (tmp_path / "mnt").mkdir()
    mounted = _mount_tiny_tmpfs(tmp_path / "mnt", "1m")
    yield {"tiny": str(tiny_onnx), "root": str(tmp_path), "mounted": mounted}
    if mounted:
        subprocess.run(["umount", str(tmp_path / "mnt")], capture_output=True)


# (folder to run in, arguments, fragments of the one line): outputs that would replace the folder the user
# is in, the source or the samples, or that cannot be replaced at all (issue #17, defect 5: `-o .` inside a
# build folder ran the whole build, then failed with "could not write '.': Device or resource busy" and left
# `..<pid>.*.tmp` in the parent folder)
UNSAFE_OUTPUTS = [
    ("build", ["build", "{tiny}", "-o", "."], ["output '.' is the current folder"]),
    ("build/sub", ["build", "{tiny}", "-o", ".."], ["output '..' contains the current folder"]),
    ("art", ["compile", "{tiny}", "-o", "."], ["output '.' is the current folder"]),
    (".", ["build", "{tiny}", "-o", "/"], ["output '/' contains the current folder"]),
    (".", ["build", "build/model.onnx", "-o", "build"], ["output 'build' contains the source", "model.onnx"]),
    (".", ["compile", "art/model.onnx", "-o", "art"], ["output 'art' contains the source"]),
    (".", ["convert", "{tiny}", "-o", "{tiny}"], ["is the source model itself"]),
    (".", ["optimize", "{tiny}", "--simplify", "-o", "{tiny}"], ["is the source model itself"]),
    (".", ["calibrate", "{tiny}", "--calib", "build/images", "-o", "{tiny}"], ["is the source model itself"]),
    (".", ["build", "{tiny}", "-o", "build", "--target", "x86:int8", "--calib", "build/images"],
     ["output 'build' contains the --calib folder"]),
    (".", ["build", "{tiny}", "-o", "mnt"], ["output 'mnt' is a mount point"]),
    (".", ["compile", "{tiny}", "-o", "mnt"], ["output 'mnt' is a mount point"]),
]


@pytest.mark.parametrize("where, args, fragments", UNSAFE_OUTPUTS,
                         ids=[f"{i:02d}-{a[0]}-{a[a.index('-o') + 1]}" for i, (_, a, _) in enumerate(UNSAFE_OUTPUTS)])
def test_unsafe_output_is_refused_before_any_work(where, args, fragments, places, capsys, monkeypatch):
    root = Path(places["root"])
    if "mnt" in args and not places["mounted"]:
        pytest.skip("cannot mount a tmpfs here (needs root and mount)")
    before = files_in(root)
    monkeypatch.chdir(root / where)
    code, _, err = run_main([a.format(**places) for a in args], capsys)
    assert_one_line_error(code, err, *fragments)
    assert files_in(root) == before, "nothing may be written, replaced or left behind (no *.tmp anywhere)"


def _mount_tiny_tmpfs(folder: Path, size: str) -> bool:
    if shutil.which("mount") is None or os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
                          capture_output=True).returncode == 0


def test_disk_full_during_a_write(tmp_path, capsys):
    """A 256 KiB file system fills up while a 1.6 MB model is written: one line, nothing left behind."""
    full = tmp_path / "full"
    full.mkdir()
    if not _mount_tiny_tmpfs(full, "256k"):
        pytest.skip("cannot mount a small tmpfs here (needs root and mount)")
    try:
        weight = np.random.default_rng(0).standard_normal((640, 640)).astype(np.float32)  # 1.6 MB
        onnx.save(make_single_layer_model(weight), str(tmp_path / "m.onnx"))
        code, _, err = run_main(["convert", str(tmp_path / "m.onnx"), "-o", str(full / "m.onnx")], capsys)
        assert_one_line_error(code, err, "could not write")
        assert files_in(full) == []
        code, _, err = run_main(["compile", str(tmp_path / "m.onnx"), "-o", str(full / "art")], capsys)
        assert_one_line_error(code, err, "could not write")
        assert files_in(full) == []
    finally:
        subprocess.run(["umount", str(full)], capture_output=True)


@pytest.mark.slow
def test_model_over_2gb_round_trips_through_external_data(tmp_path):
    """Two 1.16 GB weights: over protobuf's 2 GiB limit, so only external data can hold the model."""
    from onnx import helper, numpy_helper

    k = 17000
    weights = [numpy_helper.from_array((np.arange(k * k, dtype=np.float32) % (7 + i) * 1e-4).reshape(k, k), f"w{i}")
               for i in range(2)]
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w0"], ["h"]),
                               helper.make_node("MatMul", ["h", "w1"], ["y"])], "big",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, k])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, k])], weights)
    del weights
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "src").mkdir()
    onnx.save_model(model, str(tmp_path / "src" / "big.onnx"), save_as_external_data=True, location="big.onnx.data")
    del model, graph
    out = tmp_path / "out"
    out.mkdir()
    done = subprocess.run([sys.executable, "-m", "toolchain", "convert", str(tmp_path / "src" / "big.onnx"), "-o",
                           str(out / "big.onnx")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in out.iterdir()) == ["big.onnx", "big.onnx.data"]
    assert (out / "big.onnx.data").stat().st_size == 2 * k * k * 4
    assert (out / "big.onnx").stat().st_size < 4096  # the graph alone; the weights are beside it
    shown = subprocess.run([sys.executable, "-m", "toolchain", "inspect", str(out / "big.onnx"), "--json"],
                           capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and '"parameter_count": 578000000' in shown.stdout
