"""TensorFlow/Keras frontend against real TensorFlow, tf2onnx and ONNX Runtime (no mocks)."""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
pytest.importorskip("tf2onnx")
ort = pytest.importorskip("onnxruntime")

from toolchain import api  # noqa: E402
from toolchain.errors import ConversionError, InputFileError, UsageError  # noqa: E402
from toolchain.frontends import ingest  # noqa: E402
from toolchain.frontends import tensorflow_frontend as tff  # noqa: E402
from toolchain.frontends.base import ConvertOptions  # noqa: E402
from toolchain.inputs import InputSpec  # noqa: E402

TOLERANCE = 1e-4


# ------------------------------------------------------------------ model builders


def _sequential() -> keras.Model:
    return keras.Sequential([
        keras.Input((8, 8, 3), name="image"),
        keras.layers.Conv2D(4, 3, activation="relu"),
        keras.layers.Flatten(),
        keras.layers.Dense(5, name="scores"),
    ], name="seq")


def _multi_io() -> keras.Model:
    image = keras.Input((8, 8, 3), name="img")
    vector = keras.Input((4,), name="vec")
    x = keras.layers.Conv2D(4, 3, activation="relu")(image)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Concatenate()([x, vector])
    # Declared logits before aux: tf2onnx sorts dict outputs, the frontend must restore this order.
    logits = keras.layers.Dense(2, name="logits")(x)
    aux = keras.layers.Dense(3, name="aux")(x)
    return keras.Model([image, vector], [logits, aux], name="multi")


def _fully_convolutional() -> keras.Model:
    frame = keras.Input((None, None, 3), name="frame")
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu")(frame)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(frame, keras.layers.Dense(2, name="head")(x), name="fcn")


def _with_lambda() -> keras.Model:
    return keras.Sequential([
        keras.Input((4,), name="x"),
        keras.layers.Dense(3),
        keras.layers.Lambda(lambda t: t * 2.0 + 1.0, name="scale"),
    ], name="lam")


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | keras.Model]:
    """Every model saved once per module, in every format the frontend reads."""
    keras.utils.set_random_seed(0)
    root = tmp_path_factory.mktemp("tf_models")
    with warnings.catch_warnings():
        # Keras' own saving code trips numpy 2's __array__(copy=...) deprecation; not ours to fix.
        warnings.simplefilter("ignore", DeprecationWarning)
        return _save_all(root)


def _save_all(root: Path) -> dict[str, Path | keras.Model]:
    files: dict[str, Path | keras.Model] = {}
    for name, build in {"seq": _sequential, "multi": _multi_io}.items():
        model = build()
        files[f"{name}:model"] = model
        files[f"{name}:keras"] = root / f"{name}.keras"
        files[f"{name}:h5"] = root / f"{name}.h5"
        files[f"{name}:savedmodel"] = root / f"{name}_savedmodel"
        model.save(files[f"{name}:keras"])
        model.save(files[f"{name}:h5"])
        model.export(str(files[f"{name}:savedmodel"]))
    files["fcn:keras"] = root / "fcn.keras"
    _fully_convolutional().save(files["fcn:keras"])
    lam = _with_lambda()
    files["lam:model"] = lam
    files["lam:keras"], files["lam:h5"] = root / "lam.keras", root / "lam.h5"
    lam.save(files["lam:keras"])
    lam.save(files["lam:h5"])
    return files


# ----------------------------------------------------------------------- helpers


def _feed(model, batch: int = 1, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feed = {}
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") else batch for d in value.type.tensor_type.shape.dim]
        feed[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feed


def _run_onnx(model, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, feed)))


def _max_error(ingested, batch: int = 1) -> float:
    feed = _feed(ingested.model, batch)
    expected = ingested.reference(feed)
    actual = _run_onnx(ingested.model, feed)
    assert list(expected) == list(actual) == [o.name for o in ingested.model.graph.output]
    return max(float(np.max(np.abs(expected[k] - actual[k]))) for k in expected)


def _dims(value) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else d.dim_param for d in value.type.tensor_type.shape.dim]


def _truncated(source: Path, dest: Path) -> Path:
    data = source.read_bytes()
    dest.write_bytes(data[: len(data) // 2])
    return dest


# ------------------------------------------------------------------ round trips

CASES = [
    ("seq", "keras", ["image"], ["scores"]),
    ("seq", "h5", ["image"], ["scores"]),
    ("seq", "savedmodel", ["image"], ["output_0"]),
    ("multi", "keras", ["img", "vec"], ["logits", "aux"]),
    ("multi", "h5", ["img", "vec"], ["logits", "aux"]),
    ("multi", "savedmodel", ["img", "vec"], ["output_0", "output_1"]),
]


@pytest.mark.parametrize(("name", "fmt", "inputs", "outputs"), CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_round_trip_matches_tensorflow(saved, name, fmt, inputs, outputs) -> None:
    options = ConvertOptions()
    path = saved[f"{name}:{fmt}"]
    ingested = (tff.ingest_savedmodel(path, options) if fmt == "savedmodel"
                else tff.ingest_keras_file(path, options))

    assert ingested.source_format == fmt
    assert ingested.framework == "tensorflow" and ingested.framework_version == tf.__version__
    assert [v.name for v in ingested.model.graph.input] == inputs
    assert [v.name for v in ingested.model.graph.output] == outputs
    assert {(o.domain or "ai.onnx"): o.version for o in ingested.model.opset_import}["ai.onnx"] == 17
    # Static batch 1 by default, NHWC kept as in the model.
    assert _dims(ingested.model.graph.input[0]) == [1, 8, 8, 3]

    error = _max_error(ingested)
    print(f"\n{name}-{fmt}: max abs error {error:.3g}")
    assert error < TOLERANCE

    # The reference is TensorFlow itself: it agrees with the in-memory Keras model.
    feed = _feed(ingested.model, seed=1)
    original = saved[f"{name}:model"]
    direct = original([feed[k] for k in inputs] if len(inputs) > 1 else feed[inputs[0]], training=False)
    direct = [np.asarray(t) for t in tf.nest.flatten(direct)]
    reference = list(ingested.reference(feed).values())
    for got, want in zip(reference, direct):
        np.testing.assert_allclose(got, want, atol=1e-5)


def test_dispatcher_routes_savedmodel_and_keras(saved) -> None:
    assert ingest(saved["seq:savedmodel"], ConvertOptions()).source_format == "savedmodel"
    assert ingest(saved["seq:h5"], ConvertOptions()).source_format == "h5"


def test_api_convert_verifies_keras_model(saved, tmp_path) -> None:
    result = api.convert(saved["multi:keras"], tmp_path / "multi.onnx", dynamic_batch=True)
    assert result.framework == "tensorflow" and result.source_format == "keras"
    assert result.parity and max(o.max_abs for r in result.parity for o in r.outputs) < TOLERANCE


# ----------------------------------------------------------------- input shapes


def test_override_with_dynamic_batch(saved) -> None:
    options = ConvertOptions(inputs=(InputSpec("frame", (1, 16, 16, 3)),), dynamic_batch=True)
    ingested = tff.ingest_keras_file(saved["fcn:keras"], options)

    assert _dims(ingested.model.graph.input[0]) == ["batch", 16, 16, 3]
    assert _dims(ingested.model.graph.output[0]) == ["batch", 2]
    error = _max_error(ingested, batch=3)
    print(f"\nfcn-keras override+dynamic batch 3: max abs error {error:.3g}")
    assert error < TOLERANCE


def test_unknown_dims_need_override(saved) -> None:
    with pytest.raises(UsageError) as info:
        tff.ingest_keras_file(saved["fcn:keras"], ConvertOptions())
    line = info.value.one_line()
    assert "'frame'" in line and "--input frame:" in line


def test_override_rank_mismatch_names_both_shapes(saved) -> None:
    options = ConvertOptions(inputs=(InputSpec("image", (1, 8, 8)),))
    with pytest.raises(UsageError) as info:
        tff.ingest_keras_file(saved["seq:keras"], options)
    assert "1x8x8" in info.value.message and "?x8x8x3" in info.value.message


def test_override_conflicting_with_fixed_dim(saved) -> None:
    with pytest.raises(UsageError, match="fixes axis 1 of 'image' at 8"):
        tff.ingest_keras_file(saved["seq:keras"], ConvertOptions(inputs=(InputSpec("image", (1, 16, 16, 3)),)))


def test_opset_beyond_tf2onnx(saved) -> None:
    with pytest.raises(ConversionError) as info:
        tff.ingest_keras_file(saved["seq:keras"], ConvertOptions(opset=23))
    assert "--opset 18" in info.value.one_line()


def test_opset_is_honoured(saved) -> None:
    ingested = tff.ingest_keras_file(saved["seq:keras"], ConvertOptions(opset=13))
    assert {(o.domain or "ai.onnx"): o.version for o in ingested.model.opset_import}["ai.onnx"] == 13


def test_override_unknown_input_name(saved) -> None:
    with pytest.raises(UsageError, match="img, vec"):
        tff.ingest_savedmodel(saved["multi:savedmodel"], ConvertOptions(inputs=(InputSpec("nope", (1, 4)),)))


# ------------------------------------------------------------------- safe mode


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_lambda_refused_in_safe_mode(saved, fmt) -> None:
    with pytest.raises(InputFileError) as info:
        tff.ingest_keras_file(saved[f"lam:{fmt}"], ConvertOptions())
    line = info.value.one_line()
    assert "Lambda" in line and "--no-keras-safe-mode" in line and "\n" not in line


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_lambda_accepted_without_safe_mode(saved, fmt) -> None:
    ingested = tff.ingest_keras_file(saved[f"lam:{fmt}"], ConvertOptions(keras_safe_mode=False))
    error = _max_error(ingested)
    print(f"\nlam-{fmt} (safe mode off): max abs error {error:.3g}")
    assert error < TOLERANCE


# --------------------------------------------------------------- broken inputs


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_truncated_keras_file(saved, tmp_path, fmt) -> None:
    broken = _truncated(saved[f"seq:{fmt}"], tmp_path / f"broken.{fmt}")
    with pytest.raises(InputFileError) as info:
        tff.ingest_keras_file(broken, ConvertOptions())
    assert "broken" in info.value.message and "\n" not in info.value.one_line()


def test_missing_keras_file(tmp_path) -> None:
    with pytest.raises(InputFileError, match="does not exist"):
        tff.ingest_keras_file(tmp_path / "absent.keras", ConvertOptions())


def test_savedmodel_without_variables(saved, tmp_path) -> None:
    copy = tmp_path / "no_vars"
    shutil.copytree(saved["seq:savedmodel"], copy)
    shutil.rmtree(copy / "variables")
    with pytest.raises(InputFileError) as info:
        tff.ingest_savedmodel(copy, ConvertOptions())
    assert "variables/" in info.value.message


def test_savedmodel_without_signature(tmp_path) -> None:
    module = tf.Module()
    module.scale = tf.Variable(2.0)
    module.run = tf.function(lambda x: x * module.scale)
    module.run(tf.ones((2,)))
    tf.saved_model.save(module, str(tmp_path / "nosig"), signatures={})
    with pytest.raises(InputFileError, match="no serving signature"):
        tff.ingest_savedmodel(tmp_path / "nosig", ConvertOptions())


# ------------------------------------------------------------------------- noise


def test_conversion_keeps_logs_and_stdout_quiet(saved, caplog, capsys) -> None:
    caplog.set_level(logging.INFO)
    before = {name: logging.getLogger(name).level for name in ("tf2onnx", "tensorflow")}
    tff.ingest_keras_file(saved["seq:keras"], ConvertOptions())
    assert not [r for r in caplog.records if r.name.startswith("tf2onnx") and r.levelno < logging.ERROR]
    assert capsys.readouterr().out == ""
    assert {name: logging.getLogger(name).level for name in before} == before
