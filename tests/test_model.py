"""The model family, its two exports, and conversion to a streaming int8 model (real TensorFlow, real TFLite)."""
import sys

import numpy as np
import pytest

from tests.bundles import FSDD_CLIPS
from tests.conftest import require_module

tf = require_module("tensorflow")
keras = require_module("keras")

from edge.bundle import load_bundle  # noqa: E402
from edge.runner import StepRunner  # noqa: E402
from firmware_tools import convert, dataset  # noqa: E402
from firmware_tools.model import (ModelSpec, build_step_model, build_window_model, merge_branches,  # noqa: E402
                                  stream_float)
from firmware_tools.training import DEFAULT_FRONTEND  # noqa: E402


def clip_frames(n=3):
    clips = dataset.scan_labelled(FSDD_CLIPS)[:n]
    return [dataset.clip_frames(DEFAULT_FRONTEND, dataset.read_clip(c.path, 8000)) for c in clips]


def randomised_model(spec, seed=0):
    """A window model with random weights and non-trivial BatchNorm statistics."""
    keras.utils.set_random_seed(seed)
    model = build_window_model(spec)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            gamma, beta, mean, var = layer.get_weights()
            layer.set_weights([gamma * rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.5, beta.shape),
                               rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 2, var.shape)])
    return model


def test_receptive_field_reaches_a_second():
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11)
    assert spec.receptive_field >= 100  # frames of 10 ms


def test_step_model_equals_window_model_in_float():
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=16)
    window = randomised_model(spec)
    step = build_step_model(spec, window)
    frames = clip_frames(1)[0]
    expected = np.asarray(window(frames[None].astype(np.float32), training=False))[0]
    streamed = stream_float(step, spec, frames)
    np.testing.assert_allclose(streamed, expected, atol=1e-5)


def test_window_model_is_causal():
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=8)
    window = randomised_model(spec)
    frames = clip_frames(1)[0].astype(np.float32)
    changed = frames.copy()
    changed[60:] = 0
    a = np.asarray(window(frames[None], training=False))[0]
    b = np.asarray(window(changed[None], training=False))[0]
    np.testing.assert_allclose(a[:60], b[:60], atol=1e-6)
    assert not np.allclose(a[60:], b[60:])


def two_branch_model(spec):
    """Two separately built models merged into one averaging network."""
    full, other = randomised_model(spec, seed=1), randomised_model(spec, seed=2)
    return full, other, merge_branches([full, other], spec)


def test_merged_branches_average_their_models():
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=8, dilations=(1, 2, 4))
    first, second, merged = two_branch_model(spec)
    frames = clip_frames(1)[0][None].astype(np.float32)
    expected = (np.asarray(first(frames)) + np.asarray(second(frames))) / 2
    np.testing.assert_allclose(np.asarray(merged(frames)), expected, atol=1e-6)
    assert not np.allclose(np.asarray(first(frames)), expected, atol=1e-3)  # both branches count


def test_two_branch_step_model_equals_window_model_in_float():
    one = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=8, dilations=(1, 2, 4))
    _, _, merged = two_branch_model(one)
    read_spec, _ = convert.spec_from_model(merged)
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=8, dilations=(1, 2, 4), branches=2)
    assert read_spec == spec
    step = build_step_model(spec, merged)
    frames = clip_frames(1)[0]
    expected = np.asarray(merged(frames[None].astype(np.float32), training=False))[0]
    np.testing.assert_allclose(stream_float(step, spec, frames), expected, atol=1e-5)


@pytest.mark.parametrize("branches", [1, 2])
def test_int8_step_model_tracks_float_window_model(tmp_path, branches):
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=16, dilations=(1, 2, 4, 8))
    window = randomised_model(spec, seed=3) if branches == 1 else two_branch_model(spec)[2]
    model_path = tmp_path / "model.keras"
    window.save(model_path)
    from firmware_tools import pipeline

    clips = dataset.scan_labelled(FSDD_CLIPS)
    bundle, report = pipeline.convert_into_bundle(model_path, clips[:16], tmp_path / "bundle", DEFAULT_FRONTEND,
                                                  [str(d) for d in range(10)], provenance={})
    assert report["size_bytes"] < 100_000
    # Each layer slices its history out of the state and its new history out of the window, and applies its kernel
    # to the window in one convolution: no slices to pick the kernel's inputs. The branches run side by side, as the
    # groups of those convolutions: the same operations however many branches. The input scaling is folded into
    # the stem and every clipped ReLU into its convolution (as ReLU6): no MUL, MINIMUM or RELU operations.
    from edge.runner import make_interpreter

    interpreter, _ = make_interpreter(load_bundle(bundle.path).step_model_path, without_default_delegates=True)
    ops = [op["op_name"] for op in interpreter._get_ops_details()]
    assert not {"MUL", "MINIMUM", "RELU", "RELU6"} & set(ops)
    assert ops.count("STRIDED_SLICE") == 2 * len(spec.dilations)
    assert ops.count("CONV_2D") == len(spec.dilations) + 2
    assert ops.count("SOFTMAX") == 1 and len(ops) == 6 * len(spec.dilations) + 7  # 31 for one branch or two
    runner = StepRunner(load_bundle(bundle.path))
    for frames in clip_frames(3):
        expected = np.asarray(window(frames[None].astype(np.float32), training=False))[0, :, :10]
        runner.reset()
        got = np.array([runner.step(f) for f in frames])
        # int8 scores are quantised in steps of 1/256; allow a few steps of accumulated error.
        assert np.abs(got - expected).max() < 0.06
        assert np.abs(got - expected).mean() < 0.01


@pytest.mark.parametrize("bad_layer, message", [
    (lambda: keras.layers.LSTM(8, return_sequences=True), "LSTM"),
    (lambda: keras.layers.Conv1D(8, 3, padding="same"), "padding='same'"),
    (lambda: keras.layers.Dense(8), "Dense"),
])
def test_unsupported_layers_are_named(bad_layer, message):
    inp = keras.Input((None, DEFAULT_FRONTEND.features))
    x = keras.layers.Rescaling(1 / 64)(inp)
    x = keras.layers.Conv1D(8, 1)(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.ReLU(max_value=3.0)(x)
    x = bad_layer()(x)
    out = keras.layers.Conv1D(11, 1, activation="softmax")(x)
    with pytest.raises(convert.ConversionError, match=message):
        convert.spec_from_model(keras.Model(inp, out))


def family_like(rescale=1 / 64, conv=None, bn=None, relu=None, stem_bn=True):
    """The family's layers, with keyword changes to its convolutions, BatchNormalizations or ReLUs."""
    conv, bn, relu = conv or {}, bn or {}, relu or {}
    L = keras.layers
    inp = keras.Input((None, DEFAULT_FRONTEND.features))
    x = L.Conv1D(8, 1, **conv)(L.Rescaling(rescale)(inp))
    x = L.ReLU(max_value=3.0, **relu)(L.BatchNormalization(**bn)(x) if stem_bn else x)
    for d in (1, 2):
        x = L.Conv1D(8, 3, dilation_rate=d, padding="causal", **conv)(x)
        x = L.ReLU(max_value=3.0, **relu)(L.BatchNormalization(**bn)(x))
    return keras.Model(inp, L.Conv1D(11, 1, activation="softmax")(x))


@pytest.mark.parametrize("changes, message", [
    (dict(rescale=1 / 8), "Rescaling\(scale=0.125.*scale 1/64, offset 0"),
    (dict(conv=dict(activation="tanh")), "activation='tanh'; leave it linear"),
    (dict(relu=dict(negative_slope=0.3)), "no negative_slope or threshold"),
    (dict(relu=dict(threshold=1.0)), "no negative_slope or threshold"),
    (dict(conv=dict(use_bias=False)), "has no bias"),
    (dict(bn=dict(center=False)), "BatchNormalization\(center=True, scale=True\)"),
    (dict(stem_bn=False), "must be followed by BatchNormalization"),
])
def test_a_model_the_step_model_would_not_reproduce_is_refused_by_name(changes, message):
    """Only the weights are carried over into the family's own layers: anything else they do must be refused,
    or the bundle would compute something other than what was trained."""
    with pytest.raises(convert.ConversionError, match=message):
        convert.canonical_window_model(family_like(**changes))
    convert.canonical_window_model(family_like())  # the same builder, unchanged, converts


def test_any_model_with_matching_layers_converts_by_mapping():
    """Layer names need not match the family's: the structure is what counts."""
    inp = keras.Input((None, DEFAULT_FRONTEND.features))
    x = keras.layers.Rescaling(1 / 64, name="scale_me")(inp)
    x = keras.layers.Conv1D(8, 1, name="first")(x)
    x = keras.layers.BatchNormalization(name="n0")(x)
    x = keras.layers.ReLU(max_value=3.0, name="r0")(x)
    for d in (1, 2):
        x = keras.layers.Conv1D(8, 3, dilation_rate=d, padding="causal", name=f"c{d}")(x)
        x = keras.layers.BatchNormalization(name=f"n{d}")(x)
        x = keras.layers.ReLU(max_value=3.0, name=f"r{d}")(x)
    out = keras.layers.Conv1D(11, 1, activation="softmax", name="out")(x)
    custom = keras.Model(inp, out)
    canonical, spec = convert.canonical_window_model(custom)
    assert spec.dilations == (1, 2) and spec.width == 8
    frames = clip_frames(1)[0][None].astype(np.float32)
    np.testing.assert_allclose(np.asarray(canonical(frames)), np.asarray(custom(frames)), atol=1e-6)


def test_lint_rejects_float_models(tmp_path):
    inp = keras.Input((32,), batch_size=1)
    model = keras.Model(inp, keras.layers.Dense(4)(inp))
    path = tmp_path / "float.tflite"
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    problems = convert.lint_tflite(path)
    assert any("float" in p for p in problems)


def test_lint_rejects_models_that_old_runtimes_cannot_run(tmp_path, monkeypatch):
    """A grouped convolution converts to CONV_2D version 6, which TFLite runtimes before 2.9 do not have: fine for
    the oldest runtime basilar supports, refused where an older one had to run it."""
    inp = keras.Input((3, 8), batch_size=1)
    model = keras.Model(inp, keras.layers.Conv1D(8, 3, groups=2)(inp))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([np.random.default_rng(i).normal(size=(1, 3, 8)).astype(np.float32)]
                                                for i in range(10))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = tmp_path / "grouped.tflite"
    path.write_bytes(converter.convert())
    assert convert.min_runtime_version(path) == "2.9.0"
    assert not any("needs a TFLite runtime" in p for p in convert.lint_tflite(path))
    monkeypatch.setattr(convert, "OLDEST_RUNTIME", (2, 8, 0))
    assert any("needs a TFLite runtime 2.9.0 or newer" in p for p in convert.lint_tflite(path))


def test_the_shipped_step_model_runs_on_the_oldest_supported_runtime():
    from edge.bundle import load_bundle

    step_model = load_bundle("default").step_model_path
    assert tuple(map(int, convert.min_runtime_version(step_model).split("."))) <= convert.OLDEST_RUNTIME
    assert convert.lint_tflite(step_model) == []


def test_converter_crash_becomes_a_clear_error(tmp_path, monkeypatch):
    """A converter that dies by a signal (as the TF converter can) is reported, not propagated."""
    crasher = tmp_path / "crash.py"
    crasher.write_text("import os, signal\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    wrapper = tmp_path / "python-that-crashes"
    wrapper.write_text(f"#!/bin/sh\nexec {sys.executable} {crasher}\n")
    wrapper.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(wrapper))
    with pytest.raises(convert.ConversionError, match="crashed \\(signal 11\\)"):
        convert.convert_to_int8(tmp_path / "m.keras", clip_frames(1), tmp_path / "out.tflite")


def test_unloadable_model_is_a_clear_error(tmp_path):
    bogus = tmp_path / "bogus.keras"
    bogus.write_bytes(b"not a keras file")
    with pytest.raises(convert.ConversionError, match="cannot load"):
        convert.convert_to_int8(bogus, clip_frames(1), tmp_path / "out.tflite")


def test_compacting_keeps_every_output_bit_and_saves_bytes(tmp_path):
    """compact_tflite drops inner tensor names only: the same int8 outputs for the same inputs, fewer bytes."""
    spec = ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=8, dilations=(1, 2, 4))
    window = randomised_model(spec, seed=4)
    samples = convert.representative_samples(window, spec, clip_frames(2))
    original = convert.quantise_step_model(build_step_model(spec, window), samples)
    compact = convert.compact_tflite(original)
    assert len(compact) < 0.9 * len(original)
    interpreters = [tf.lite.Interpreter(model_content=m) for m in (original, compact)]
    for it in interpreters:
        it.allocate_tensors()
    assert [d["name"] for d in interpreters[1].get_input_details()] == \
        [d["name"] for d in interpreters[0].get_input_details()]
    rng = np.random.default_rng(0)
    for _ in range(20):
        feeds = [rng.integers(-128, 128, d["shape"]).astype(np.int8) for d in interpreters[0].get_input_details()]
        outputs = []
        for it in interpreters:
            for d, feed in zip(it.get_input_details(), feeds):
                it.set_tensor(d["index"], feed)
            it.invoke()
            outputs.append([it.get_tensor(d["index"]).copy() for d in it.get_output_details()])
        for a, b in zip(*outputs):
            np.testing.assert_array_equal(a, b)
