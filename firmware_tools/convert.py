"""Keras window model -> int8 streaming step model (TFLite), with calibration from the real front end.

The TFLite converter can take the whole process down, so `convert_to_int8()` runs the conversion in a child
process (`python -m firmware_tools.convert_worker`) and turns a crash into a clear error.
"""
import dataclasses
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from firmware_tools.model import ACTIVATION_MAX, STATE_MAX, STEP_GAIN, ModelSpec, branch_prefix

FORBIDDEN_OPS = ("WHILE", "FLEX", "CUSTOM")
# The oldest TFLite runtime a bundle must run on. basilar needs Python 3.10 or newer, and the oldest tflite-runtime
# PyPI has for any such Python is 2.13 (x86-64, aarch64 and 32-bit Arm; docs/models.md, "Runtimes"). The converter
# records in each model the oldest runtime that has all its ops at their versions (grouped convolutions need 2.9).
OLDEST_RUNTIME = (2, 13, 0)
CALIBRATION_STEPS = 600


class ConversionError(ValueError):
    """The model cannot become a streaming int8 model; the message says why and what to change."""


def require_keras_file(model_path) -> None:
    """Only a .keras file loads as the Keras model a conversion reads (an .h5 file, a SavedModel folder: no layers to
    map onto the family); refused by its name, before anything is read."""
    if not str(model_path).endswith(".keras"):
        raise ConversionError(f"{model_path} is not a .keras file: convert takes the model.keras `basilar train` "
                              "writes, or a Keras model saved by keras.Model.save as .keras (load an .h5 file or a "
                              "SavedModel in Keras and save it so)")


# ---- mapping an arbitrary Keras model onto the family ----

def spec_from_model(model) -> tuple[ModelSpec, dict]:
    """Read a Keras model as stem -> [causal dilated Conv1D, BN, clipped ReLU]* -> head; return the spec and the
    layers by canonical name. Anything else is a ConversionError naming the layer and what to use instead.

    A model ending in an Average layer is read as branches named as build_window_model names them."""
    import keras

    L = keras.layers
    seq = [layer for layer in model.layers if not isinstance(layer, (L.InputLayer, L.Dropout))]
    names = {}
    if seq and isinstance(seq[0], L.Rescaling):
        names["input_scale"] = seq.pop(0)
        _check_rescaling(names["input_scale"])
    if not any(isinstance(layer, L.Average) for layer in seq):
        spec, branch_names = _parse_branch(model, seq)
        return spec, {**names, **branch_names}
    branches = {}
    for layer in seq:
        if isinstance(layer, L.Average):
            continue
        match = re.match(r"b(\d+)_", layer.name)
        branches.setdefault(int(match.group(1)) if match else 0, []).append(layer)
    if sorted(branches) != list(range(len(branches))):
        raise ConversionError("a model that averages branches must name branch k's layers `b{k}_...`; build it "
                              "with firmware_tools.model.build_window_model")
    specs = []
    for k in range(len(branches)):
        spec, branch_names = _parse_branch(model, branches[k])
        specs.append(spec)
        names.update({branch_prefix(k) + name: layer for name, layer in branch_names.items()})
    if len(set(specs)) != 1:
        raise ConversionError("every branch of an averaged model must have the same width, kernel and dilations")
    return dataclasses.replace(specs[0], branches=len(specs)), names


def _parse_branch(model, seq) -> tuple[ModelSpec, dict]:
    import keras

    L = keras.layers
    names = {}
    i = 0
    convs = []
    while i < len(seq):
        layer = seq[i]
        if not isinstance(layer, L.Conv1D) or isinstance(layer, (L.Conv1DTranspose,)):
            raise ConversionError(_unsupported(layer))
        if layer.groups != 1 or layer.strides[0] != 1:
            raise ConversionError(f"layer {layer.name!r}: strided or grouped Conv1D cannot stream one frame per "
                                  "step; use strides=1, groups=1")
        if layer.kernel_size[0] > 1 and layer.padding != "causal":
            raise ConversionError(f"layer {layer.name!r} uses padding={layer.padding!r}, which looks at future "
                                  "frames; use padding='causal'")
        if not layer.use_bias:
            raise ConversionError(f"layer {layer.name!r} has no bias; use Conv1D(use_bias=True), as the family does")
        bn = seq[i + 1] if i + 1 < len(seq) and isinstance(seq[i + 1], L.BatchNormalization) else None
        if bn is not None and not (bn.center and bn.scale):
            raise ConversionError(f"layer {bn.name!r}: use BatchNormalization(center=True, scale=True), which the "
                                  "step model folds into the convolution")
        i += 2 if bn else 1
        act = seq[i] if i < len(seq) and isinstance(seq[i], L.ReLU) else None
        if act is not None:
            if act.max_value is None or float(act.max_value) != ACTIVATION_MAX:
                raise ConversionError(f"layer {act.name!r}: use ReLU(max_value={ACTIVATION_MAX:g}) so that the "
                                      "streaming state has one fixed int8 range")
            if float(act.negative_slope) != 0 or float(act.threshold) != 0:
                raise ConversionError(f"layer {act.name!r}: use ReLU(max_value={ACTIVATION_MAX:g}) with no "
                                      "negative_slope or threshold; the step model clips at 0 and "
                                      f"{ACTIVATION_MAX:g}")
            i += 1
        convs.append((layer, bn, act))
    if len(convs) < 3:
        raise ConversionError("expected a 1x1 stem Conv1D, at least one causal dilated Conv1D, and a 1x1 head")
    stem, *tcn, head = convs
    if stem[0].kernel_size[0] != 1 or stem[2] is None:
        raise ConversionError(f"the first Conv1D ({stem[0].name!r}) must be 1x1 and followed by clipped ReLU")
    if head[0].kernel_size[0] != 1 or head[1] is not None or head[2] is not None:
        raise ConversionError(f"the last Conv1D ({head[0].name!r}) must be a plain 1x1 layer with softmax")
    if _activation_name(head[0]) != "softmax":
        raise ConversionError(f"the last Conv1D ({head[0].name!r}) must use activation='softmax'")
    if stem[1] is None:
        raise ConversionError(f"the first Conv1D ({stem[0].name!r}) must be followed by BatchNormalization and "
                              "clipped ReLU")
    for conv, _, _ in (stem, *tcn):
        if _activation_name(conv) != "linear":  # the clipped ReLU after BatchNormalization is the activation
            raise ConversionError(f"layer {conv.name!r} uses activation={_activation_name(conv)!r}; leave it "
                                  "linear: the family's activation is the clipped ReLU after BatchNormalization")
    kernels = {c.kernel_size[0] for c, _, _ in tcn}
    widths = {c.filters for c, _, _ in tcn} | {stem[0].filters}
    if len(kernels) != 1 or len(widths) != 1 or any(bn is None or act is None for _, bn, act in tcn):
        raise ConversionError("every temporal layer must have the same kernel size and width and be followed "
                              "by BatchNormalization and clipped ReLU")
    spec = ModelSpec(channels=model.input_shape[-1], classes=head[0].filters, width=widths.pop(),
                     kernel=kernels.pop(), dilations=tuple(c.dilation_rate[0] for c, _, _ in tcn))
    names.update({"stem": stem[0], "stem_bn": stem[1], "head": head[0]})
    for k, (c, bn, _) in enumerate(tcn):
        names[f"tcn{k}"], names[f"tcn{k}_bn"] = c, bn
    return spec, names


def _check_rescaling(layer) -> None:
    from firmware_tools.model import INPUT_SCALE

    scale, offset = np.ravel(layer.scale), np.ravel(layer.offset)
    if not (np.allclose(scale, INPUT_SCALE) and np.allclose(offset, 0)):
        raise ConversionError(f"layer {layer.name!r} is Rescaling(scale={layer.scale}, offset={layer.offset}); the "
                              "step model takes the int8 frames as Rescaling(1/64) does (scale 1/64, offset 0)")


def _activation_name(layer) -> str:
    act = layer.activation
    return getattr(act, "__name__", str(act))


def _unsupported(layer) -> str:
    kind = type(layer).__name__
    hint = {
        "Conv2D": "a 2-D convolution shares weights across frequency; use Conv1D over time with the bands as "
                  "channels",
        "LSTM": "use causal dilated Conv1D layers (the GRU/LSTM variant is not supported by this converter)",
        "GRU": "use causal dilated Conv1D layers (the GRU/LSTM variant is not supported by this converter)",
        "Dense": "use a 1x1 Conv1D so the layer applies to every frame",
        "MaxPooling1D": "pooling over time cannot stream one frame per step; use dilation instead",
        "Flatten": "flattening time cannot stream; use a 1x1 Conv1D head per frame",
    }.get(kind, "use the basilar family: 1x1 Conv1D stem, causal dilated Conv1D + BatchNormalization + "
                "clipped ReLU layers, 1x1 Conv1D softmax head")
    return f"layer {layer.name!r} ({kind}) is not supported in a streaming basilar model: {hint}"


def canonical_window_model(model):
    """A copy of `model` rebuilt with the family's canonical layer names (so the step model can be derived)."""
    from firmware_tools.model import build_window_model

    spec, layers = spec_from_model(model)
    canonical = build_window_model(spec)
    for name, layer in layers.items():
        canonical.get_layer(name).set_weights(layer.get_weights())
    if "input_scale" not in layers:
        raise ConversionError("the model must start with Rescaling(1/64) (frames arrive as raw int8 values); "
                              "build it with firmware_tools.model.build_window_model")
    return canonical, spec


# ---- calibration ----

def layer_inputs_model(window_model, spec: ModelSpec):
    """A model giving, for every frame, each temporal layer's input (what the step model keeps as state)."""
    import keras

    names = [branch_prefix(k) + name for k in range(spec.branches)
             for name in ["stem_act"] + [f"tcn{i}_act" for i in range(len(spec.dilations) - 1)]]
    return keras.Model(window_model.input, [window_model.get_layer(n).output for n in names])


def representative_samples(window_model, spec: ModelSpec, frame_sequences, count=CALIBRATION_STEPS, seed=0):
    """(frame, state) pairs as the device sees them while streaming, taken from real front-end frames."""
    rng = np.random.default_rng(seed)
    probe = layer_inputs_model(window_model, spec)
    samples = []
    per_clip = max(1, count // max(1, len(frame_sequences)))
    layers_per_branch = len(spec.dilations)
    for frames in frame_sequences:
        acts = probe(frames[None].astype(np.float32), training=False)
        acts = [np.asarray(a)[0] for a in (acts if isinstance(acts, (list, tuple)) else [acts])]
        for t in rng.integers(0, len(frames), per_clip):
            rows = []
            for i, d in enumerate(spec.dilations):
                n = (spec.kernel - 1) * d
                past = np.zeros((n, spec.branches * spec.width), np.float32)  # branches side by side
                for k in range(spec.branches):
                    src = acts[k * layers_per_branch + i][max(0, t - n):t]
                    if len(src):
                        past[n - len(src):, k * spec.width:(k + 1) * spec.width] = src
                rows.append(past)
            samples.append((frames[t].astype(np.float32), np.concatenate(rows) * STEP_GAIN))
    # Pin the ranges: frames span the whole int8 range, state the whole clipped ReLU range.
    extreme_frame = np.where(np.arange(spec.channels) % 2, 127.0, -128.0).astype(np.float32)
    extreme_state = np.zeros(spec.state_shape, np.float32)
    extreme_state[::2] = STATE_MAX
    samples.append((extreme_frame, extreme_state))
    return samples


# ---- the conversion itself (runs in the worker process) ----

def convert_step_model(step_model, samples) -> bytes:
    return compact_tflite(quantise_step_model(step_model, samples))


def quantise_step_model(step_model, samples) -> bytes:
    """The TFLite converter's fully int8 model, calibrated on (frame, state) samples."""
    import tensorflow as tf

    def representative():
        for frame, state in samples:
            yield {"frame": frame[None], "state": state[None]}

    converter = tf.lite.TFLiteConverter.from_keras_model(step_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    return converter.convert()


def compact_tflite(model: bytes) -> bytes:
    """The same model without the names of its inner tensors.

    The converter names every intermediate tensor after the Keras ops fused into it; those strings are a fifth
    to a quarter of a step model's bytes and nothing reads them (the runner tells the tensors apart by rank). The
    model's inputs, outputs and signature keep their names."""
    from tensorflow.lite.tools import flatbuffer_utils

    flat = flatbuffer_utils.read_model_from_bytearray(bytearray(model))
    flat.description = None
    for subgraph in flat.subgraphs:
        subgraph.name = None
        keep = set(subgraph.inputs) | set(subgraph.outputs)
        for index, tensor in enumerate(subgraph.tensors):
            if index not in keep:
                tensor.name = None
    return bytes(flatbuffer_utils.convert_object_to_bytearray(flat))


def min_runtime_version(model_path) -> str | None:
    """The oldest TFLite runtime the converter says can run the model (its `min_runtime_version` metadata)."""
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model(str(model_path))
    for entry in model.metadata or []:
        name = entry.name.decode() if isinstance(entry.name, bytes) else entry.name
        if name == "min_runtime_version":
            return bytes(model.buffers[entry.buffer].data).rstrip(b"\0").decode()
    return None


def lint_tflite(model_path) -> list[str]:
    """Problems that make a model unfit for the device: float ops, WHILE loops, select-TF (Flex) ops, ops that
    the oldest supported runtime does not have."""
    from edge.runner import make_interpreter

    interpreter, _ = make_interpreter(model_path, without_default_delegates=True)
    problems = []
    needs = min_runtime_version(model_path)
    if needs and tuple(int(part) for part in re.findall(r"\d+", needs)[:3]) > OLDEST_RUNTIME:
        oldest = ".".join(map(str, OLDEST_RUNTIME))
        problems.append(f"the model needs a TFLite runtime {needs} or newer, but devices with tflite-runtime "
                        f"{oldest} (the oldest for basilar's Pythons) must run it; build it from the layers of "
                        "firmware_tools.model")
    tensors = {t["index"]: t for t in interpreter.get_tensor_details()}
    for op in interpreter._get_ops_details():
        name = op["op_name"].upper()
        if any(bad in name for bad in FORBIDDEN_OPS):
            problems.append(f"op {op['op_name']} is not allowed on the device (no WHILE loops, no Flex/custom ops)")
        for index in list(op["inputs"]) + list(op["outputs"]):
            t = tensors.get(int(index))
            if t is not None and np.dtype(t["dtype"]).kind == "f":
                problems.append(f"op {op['op_name']} computes in float ({t['name']}); the model must be int8 "
                                "throughout")
                break
    return problems


def convert_to_int8(model_path, calibration_frames, out_path, timeout_s: int = 900) -> dict:
    """Run the conversion in a child process; returns the worker's report (spec, lint, sizes)."""
    with tempfile.TemporaryDirectory(prefix="basilar-convert-") as tmp:
        calib = Path(tmp) / "calibration.npz"
        np.savez(calib, *calibration_frames)
        report_path = Path(tmp) / "report.json"
        cmd = [sys.executable, "-m", "firmware_tools.convert_worker", str(model_path), str(calib), str(out_path),
               str(report_path)]
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, env=env)
        except subprocess.TimeoutExpired:
            raise ConversionError(f"the TFLite converter did not finish in {timeout_s} s") from None
        if proc.returncode < 0:
            raise ConversionError(f"the TFLite converter crashed (signal {-proc.returncode}) while converting "
                                  f"{model_path}; its last output:\n{_tail(proc.stderr)}")
        report = json.loads(report_path.read_text()) if report_path.exists() else None
        if proc.returncode != 0 or report is None:
            message = report.get("error") if report else None
            raise ConversionError(message or f"conversion of {model_path} failed:\n{_tail(proc.stderr)}")
        return report


def _tail(text: str, lines: int = 15) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])
