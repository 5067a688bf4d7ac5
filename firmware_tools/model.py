"""The temporal model family: a causal dilated 1-D convolution stack over front-end frames.

Frequency bands are the features; time is the only convolution axis (a sound moved up in frequency is a
different sound, so nothing is shared across frequency). Dilations 1, 2, 4, ... 32 with kernel 3 give a
receptive field of 127 frames (1.27 s at 10 ms hops): a memory whose time resolution falls with age.

Two exports share one set of weights:
  window model: frames (T, channels) -> class posteriors (T, classes), for training and clip evaluation;
  step model:   one frame + explicit state -> posteriors + new state, for streaming on the device.
A model may average several such stacks ("branches", each with its own weights, all reading the same frame):
an ensemble in one network, so one step still runs one interpreter call. Branch k's layers are named with the
prefix `b{k}_` (none for branch 0), and the averaged posteriors come out of an Average layer.

The step model's state is one tensor (rows, branches x width): every layer's input history, stacked, the branches
side by side. All stored activations are clipped ReLU outputs (0..3), so one int8 scale serves the whole state exactly;
clipping at 3 rather than 6 halves the int8 step (fewer than 1% of activations of a trained model exceed 3). The step
model keeps them doubled (STEP_GAIN), which lets TFLite fuse each activation into its convolution.
"""
import dataclasses

import keras
import numpy as np
from keras import layers

INPUT_SCALE = 1 / 64  # frames arrive as raw int8 values (model input quantisation is scale 1, zero point 0)
ACTIVATION_MAX = 3.0
# The step model stores each activation doubled: ReLU clipped at 3 is half of ReLU6 of twice its input, and TFLite
# fuses ReLU6 into the convolution before it (one operation instead of three). The int8 values are the same: the
# state's scale doubles with them (6/255).
STEP_GAIN = 2.0
STATE_MAX = ACTIVATION_MAX * STEP_GAIN


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    channels: int  # front-end channels
    classes: int  # labels + background
    width: int = 48
    kernel: int = 3
    dilations: tuple = (1, 2, 4, 8, 16, 32)
    branches: int = 1

    @property
    def receptive_field(self) -> int:
        return 1 + (self.kernel - 1) * sum(self.dilations)

    @property
    def branch_state_rows(self) -> int:
        return (self.kernel - 1) * sum(self.dilations)

    @property
    def state_shape(self) -> tuple[int, int]:
        return self.branch_state_rows, self.branches * self.width

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["dilations"] = list(self.dilations)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ModelSpec":
        d = dict(d)
        d["dilations"] = tuple(d["dilations"])
        return cls(**d)


def _activation(name: str | None = None):
    return layers.ReLU(max_value=ACTIVATION_MAX, name=name)


def branch_prefix(k: int) -> str:
    return f"b{k}_" if k else ""


def build_window_model(spec: ModelSpec, frames: int | None = None) -> keras.Model:
    inp = keras.Input((frames, spec.channels), name="frames")
    scaled = layers.Rescaling(INPUT_SCALE, name="input_scale")(inp)
    heads = [_window_branch(spec, scaled, branch_prefix(k)) for k in range(spec.branches)]
    out = heads[0] if spec.branches == 1 else layers.Average(name="average")(heads)
    return keras.Model(inp, out, name="basilar_window")


def _window_branch(spec: ModelSpec, x, p: str):
    x = layers.Conv1D(spec.width, 1, name=f"{p}stem")(x)
    x = layers.BatchNormalization(name=f"{p}stem_bn")(x)
    x = _activation(f"{p}stem_act")(x)
    for i, d in enumerate(spec.dilations):
        x = layers.Conv1D(spec.width, spec.kernel, dilation_rate=d, padding="causal", name=f"{p}tcn{i}")(x)
        x = layers.BatchNormalization(name=f"{p}tcn{i}_bn")(x)
        x = _activation(f"{p}tcn{i}_act")(x)
    x = layers.Dropout(0.1, name=f"{p}dropout")(x)
    return layers.Conv1D(spec.classes, 1, activation="softmax", name=f"{p}head")(x)


def merge_branches(models: list[keras.Model], spec: ModelSpec) -> keras.Model:
    """One window model averaging separately trained single-branch models of `spec`."""
    merged = build_window_model(dataclasses.replace(spec, branches=len(models)))
    for k, model in enumerate(models):
        for layer in model.layers:
            if layer.get_weights():
                merged.get_layer(branch_prefix(k) + layer.name).set_weights(layer.get_weights())
    return merged


def build_step_model(spec: ModelSpec, window_model: keras.Model) -> keras.Model:
    """The streaming twin of a (trained) window model, with its weights.

    Layer i keeps its last (kernel-1)*d inputs; with the new frame's input they make a window of (kernel-1)*d + 1
    rows, over which the layer's kernel, dilated by d and without padding, gives exactly the new frame's output.
    The branches run side by side as the groups of one convolution per layer, so a step runs the same operations
    however many branches it averages: the interpreter's cost per operation, not the arithmetic, is most of a
    step's time (docs/models.md, "The step model").
    """
    frame = keras.Input((spec.channels,), batch_size=1, name="frame")
    state = keras.Input(spec.state_shape, batch_size=1, name="state")
    x = layers.Reshape((1, spec.channels))(frame)
    # The input scaling is folded into the stem's kernel.
    stem = _side_by_side(spec, window_model, "stem", grouped=False, input_gain=INPUT_SCALE)
    x = layers.ReLU(max_value=STATE_MAX)(stem(x))  # (1, 1, branches * width)
    new_rows = []
    offset = 0
    for i, d in enumerate(spec.dilations):
        rows = (spec.kernel - 1) * d
        history = state[:, offset:offset + rows, :]
        window = layers.Concatenate(axis=1)([history, x])  # (1, rows + 1, branches * width), oldest first
        new_rows.append(window[:, 1:, :])
        layer = _side_by_side(spec, window_model, f"tcn{i}", dilation=d, input_gain=1 / STEP_GAIN)
        x = layers.ReLU(max_value=STATE_MAX)(layer(window))
        offset += rows
    logits = _side_by_side(spec, window_model, "head", input_gain=1 / STEP_GAIN, output_gain=1.0)(x)
    posteriors = layers.Softmax(axis=-1)(layers.Reshape((spec.branches, spec.classes))(logits))
    scores = (layers.GlobalAveragePooling1D(name="scores")(posteriors) if spec.branches > 1
              else layers.Reshape((spec.classes,), name="scores")(posteriors))
    new_state = layers.Concatenate(axis=1, name="new_state")(new_rows)
    return keras.Model([frame, state], [scores, new_state], name="basilar_step")


def _side_by_side(spec: ModelSpec, window_model: keras.Model, name: str, dilation: int = 1,
                  grouped: bool = True, input_gain: float = 1.0, output_gain: float = STEP_GAIN) -> layers.Conv1D:
    """Every branch's layer `name` as one unpadded Conv1D over a window, its BatchNorm (if any) folded in (left
    to the converter, the BatchNorm after a dilated convolution makes it fall back to float).

    Branch k's output channels come k-th. grouped: group k reads only branch k's channels (every layer but the
    stem, which reads the frame, the same for every branch, and so is one plain convolution). input_gain scales
    the kernel for an input that comes scaled (the raw frame, a doubled activation); output_gain scales kernel and
    bias so that the output comes doubled for the fused ReLU6 (1.0 for the head, whose logits go to softmax)."""
    names = {layer.name for layer in window_model.layers}
    kernels, biases = [], []
    for k in range(spec.branches):
        p = branch_prefix(k)
        kernel, bias = window_model.get_layer(p + name).get_weights()
        if p + name + "_bn" in names:
            bn = window_model.get_layer(p + name + "_bn")
            gamma, beta, mean, var = bn.get_weights()
            scale = gamma / np.sqrt(var + bn.epsilon)
            kernel, bias = kernel * scale, (bias - mean) * scale + beta
        kernels.append(kernel * (input_gain * output_gain))
        biases.append(bias * output_gain)
    kernel = np.concatenate(kernels, axis=-1)  # (taps, inputs per group, branches * outputs)
    groups = spec.branches if grouped else 1
    twin = layers.Conv1D(kernel.shape[-1], kernel.shape[0], dilation_rate=dilation, groups=groups, padding="valid")
    twin.build((1, (kernel.shape[0] - 1) * dilation + 1, kernel.shape[1] * groups))
    twin.set_weights([kernel, np.concatenate(biases)])
    return twin


def stream_float(step_model: keras.Model, spec: ModelSpec, frames: np.ndarray) -> np.ndarray:
    """Run the float step model frame by frame (for the window/step equivalence check)."""
    state = np.zeros((1, *spec.state_shape), np.float32)
    out = []
    for f in frames.astype(np.float32):
        scores, state = step_model([f[None], state], training=False)
        out.append(np.asarray(scores)[0])
        state = np.asarray(state)
    return np.array(out)
