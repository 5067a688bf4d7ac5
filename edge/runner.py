"""The model runner: one int8 streaming step per front-end frame, with the model's state carried here.

Interpreters, in order of preference: ai-edge-litert (maintained, numpy 2, aarch64 wheels), tflite-runtime (the
only choice on 32-bit Pi OS; needs numpy<2), TensorFlow's tf.lite. A candidate counts as working only once it has
run an inference on the model: an import alone hides numpy ABI mismatches.
"""
import contextlib
import os
import sys
import tempfile
import threading
import warnings

import numpy as np

# (name, module, attribute holding Interpreter): TensorFlow's public tf.lite is an attribute of the package, not the
# module tensorflow.lite (the source tree's, with no Interpreter)
RUNTIMES = (
    ("ai-edge-litert", "ai_edge_litert.interpreter", ""),
    ("tflite-runtime", "tflite_runtime.interpreter", ""),
    ("tensorflow", "tensorflow", "lite"),
)


# tf.lite's deprecation notice, ten lines on every run through the last fallback: the run's summary names the
# runtime used, and the install advice says which to prefer
warnings.filterwarnings("ignore", message=r"\s*Warning: tf.lite.Interpreter is deprecated", category=UserWarning)


class RuntimeUnavailable(RuntimeError):
    pass


def _quiet_tensorflow_start() -> None:
    """TensorFlow's start-up notices (absl, oneDNN, CPU features, CUDA) on every run through the last fallback say
    nothing about the run; TF reads these as it is imported. A user's own settings are kept; its errors still show,
    and oneDNN does not take part in tf.lite's kernels."""
    if "tensorflow" in sys.modules:  # imported already (a host command that converts and runs): too late
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")


def make_interpreter(model_path, num_threads: int = 1, delegates=None, without_default_delegates=False):
    """An allocated interpreter that has run one inference; returns (interpreter, runtime name).

    without_default_delegates: plain built-in kernels only (no XNNPACK), so the op list shows the model's own
    graph (used by the converter's lint).
    """
    import importlib

    check_tflite_file(model_path)
    failures = []
    for name, module_name, attribute in RUNTIMES:
        try:
            if module_name == "tensorflow":
                _quiet_tensorflow_start()
            module = importlib.import_module(module_name)
            module = getattr(module, attribute) if attribute else module
            cls = module.Interpreter
        except Exception as exc:  # ImportError, or a numpy ABI error raised while importing
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        try:
            kwargs = {"model_path": str(model_path), "num_threads": num_threads}
            if delegates:
                kwargs["experimental_delegates"] = delegates
            if without_default_delegates:
                resolvers = getattr(module, "OpResolverType", None) or module.experimental.OpResolverType  # tf.lite's
                kwargs["experimental_op_resolver_type"] = resolvers.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            with _without_delegate_notice():
                interpreter = cls(**kwargs)
                interpreter.allocate_tensors()
                for detail in interpreter.get_input_details():
                    interpreter.set_tensor(detail["index"], np.zeros(detail["shape"], detail["dtype"]))
                interpreter.invoke()
            return interpreter, name
        # A runtime that cannot run: a bad model, an ABI mismatch (tflite-runtime under numpy 2: SystemError). Not
        # MemoryError or OSError, which no other runtime would mend (a full disk is not a missing runtime).
        except (ValueError, RuntimeError, TypeError, AttributeError, ImportError, SystemError) as exc:
            if isinstance(exc, ValueError):  # it read the model and refused it: the model is what is wrong, and a
                # later runtime may not refuse as well (TensorFlow's crashes on a model cut short)
                raise ValueError(f"{model_path} cannot be loaded ({name}: {exc}): the file is damaged, or needs a "
                                 "newer runtime; rebuild or deploy the bundle again, or update the runtime (pip "
                                 "install -U ai-edge-litert)") from None
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
    raise RuntimeUnavailable(
        "no working TFLite interpreter: " + "; ".join(failures)
        + ". Install one: pip install ai-edge-litert (64-bit) or tflite-runtime with numpy<2 (32-bit Pi OS)")


def check_tflite_file(model_path) -> None:
    """Raise ValueError unless the file starts as a TFLite model does (its flatbuffer's identifier, "TFL3", at
    bytes 4-8): every runtime would refuse it, and the refusals would read like a broken runtime, not a bad file."""
    with open(model_path, "rb") as f:
        head = f.read(8)
    if head[4:8] != b"TFL3":
        raise ValueError(f"{model_path} is not a TFLite model (no TFL3 identifier at its start): the file is damaged "
                         "or not a model; rebuild the bundle (`basilar convert`)")


# The runtimes' C++ code prints this to file descriptor 2 whenever it builds an interpreter, and gives Python no
# switch for it: it would be the first line of every `basilar run`. Every other line it prints is passed on.
DELEGATE_NOTICE = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."


_redirect_lock = threading.Lock()  # two threads redirecting at once could leave fd 2 pointing at a dead file


@contextlib.contextmanager
def _without_delegate_notice():
    """Hold back what is written to file descriptor 2 inside the block; then pass it on, less DELEGATE_NOTICE.

    What another thread writes to standard error meanwhile is held back too, and passed on after the block."""
    with _redirect_lock:
        sys.stderr.flush()
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to filter
            yield
            return
        with tempfile.TemporaryFile() as held:
            os.dup2(held.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
                held.seek(0)
                kept = [line for line in held.read().splitlines(keepends=True) if line.rstrip() != DELEGATE_NOTICE]
                if kept:
                    os.write(2, b"".join(kept))


def _quant(detail) -> tuple[float, int]:
    scale, zero_point = detail["quantization"]
    return float(scale), int(zero_point)


class StepRunner:
    """Feeds int8 front-end frames to a bundle's step model one at a time, carrying its state.

    `step(frame)` returns the posterior (0..1) of each of `bundle.labels` for this hop. builtin_kernels: TFLite's
    own int8 kernels only, without XNNPACK: the arithmetic tflite-runtime's x86 wheels use, several times slower
    (docs/models.md, "Runtimes").
    """

    def __init__(self, bundle, num_threads: int = 1, delegates=None, builtin_kernels: bool = False):
        self.bundle = bundle
        self.labels = bundle.labels
        self.interpreter, self.runtime = make_interpreter(bundle.step_model_path, num_threads, delegates,
                                                          without_default_delegates=builtin_kernels)
        frame, state, scores, new_state = _find_tensors(self.interpreter)
        features = bundle.frontend_config.features
        shape = tuple(int(n) for n in frame["shape"])  # numpy's ints would print as np.int32(1)
        if shape != (1, features):
            raise ValueError(f"the step model takes frames of shape {shape}, but the bundle's front "
                             f"end makes {features} values per frame: the model and the front-end config do not "
                             "belong together; rebuild the bundle")
        if scores["shape"][-1] != len(self.labels) + 1:  # each label's posterior, then the background's
            raise ValueError(f"the step model has {int(scores['shape'][-1])} outputs, but the bundle names "
                             f"{len(self.labels)} labels (and the background): the manifest and the model do not "
                             "belong together; rebuild the bundle")
        self._frame_index, self._state_index = frame["index"], state["index"]
        self._scores_index, self._new_state_index = scores["index"], new_state["index"]
        if not _same_quantization(_quant(state), _quant(new_state)):
            raise ValueError(f"the step model's new-state output is quantised as {_quant(new_state)} (scale, zero "
                             f"point) but its state input as {_quant(state)}: the state cannot feed back as it is. "
                             "Convert the model with `basilar convert`, which gives both the same quantisation")
        self._frame_lut = _requantize_table((1.0, 0), _quant(frame))
        self._scores_scale, self._scores_zero = _quant(scores)
        self._state_zero = np.full(state["shape"], _quant(state)[1], dtype=np.int8)
        self._n_labels = len(self.labels)
        self.reset()

    def reset(self) -> None:
        self._state = self._state_zero.copy()

    def step(self, frame: np.ndarray) -> np.ndarray:
        """The posteriors (labels,) of one frame. `run` steps through many frames for less time per frame."""
        frame = frame[None] if self._frame_lut is None else self._frame_lut[frame[None].astype(np.int16) + 128]
        it = self.interpreter
        it.set_tensor(self._frame_index, frame.astype(np.int8, copy=False))
        it.set_tensor(self._state_index, self._state)
        it.invoke()
        self._state = it.get_tensor(self._new_state_index)
        q = it.get_tensor(self._scores_index)[0, :self._n_labels]
        return (q.astype(np.float32) - self._scores_zero) * self._scores_scale

    def run(self, frames: np.ndarray) -> np.ndarray:
        """Posteriors (len(frames), labels) for consecutive int8 frames: one model step each, the state carried.

        The interpreter's int8 scores are kept as they are and turned into posteriors once for all the frames:
        per frame, only the interpreter calls remain in the loop (they are most of a step's time)."""
        if self._frame_lut is not None:
            frames = self._frame_lut[frames.astype(np.int16) + 128]
        frames = np.ascontiguousarray(frames, dtype=np.int8)
        scores = np.empty((len(frames), self._n_labels), dtype=np.int8)
        it = self.interpreter
        set_tensor, get_tensor, invoke = it.set_tensor, it.get_tensor, it.invoke
        frame_index, state_index = self._frame_index, self._state_index
        scores_index, new_state_index = self._scores_index, self._new_state_index
        state = self._state
        for i in range(len(frames)):
            set_tensor(frame_index, frames[i:i + 1])
            set_tensor(state_index, state)
            invoke()
            state = get_tensor(new_state_index)
            scores[i] = get_tensor(scores_index)[0, :self._n_labels]
        self._state = state
        return (scores.astype(np.float32) - self._scores_zero) * self._scores_scale


def _same_quantization(a: tuple[float, int], b: tuple[float, int]) -> bool:
    return abs(a[0] - b[0]) < 1e-9 and a[1] == b[1]


def _requantize_table(source: tuple[float, int], target: tuple[float, int]):
    """256-entry int8 -> int8 table mapping values quantised with `source` to `target`; None if identical.

    For a step model whose frame input is not quantised as the front end's frames (scale 1, zero point 0)."""
    if _same_quantization(source, target):
        return None
    values = (np.arange(-128, 128) - source[1]) * source[0]
    return np.clip(np.round(values / target[0]) + target[1], -128, 127).astype(np.int8)


def _find_tensors(interpreter):
    """The step model's frame and state inputs and its scores and new-state outputs, told apart by rank."""
    inputs = interpreter.get_input_details()
    outputs = interpreter.get_output_details()
    frame = [d for d in inputs if len(d["shape"]) == 2]
    state = [d for d in inputs if len(d["shape"]) == 3]
    scores = [d for d in outputs if len(d["shape"]) == 2]
    new_state = [d for d in outputs if len(d["shape"]) == 3]
    if not (len(frame) == len(state) == len(scores) == len(new_state) == 1):
        raise ValueError("not a basilar step model: expected inputs (frame [1, channels], state [1, rows, width]) "
                         "and outputs (scores [1, classes], new state [1, rows, width])")
    for d in frame + state + scores + new_state:
        if d["dtype"] != np.int8:
            raise ValueError(f"step model tensor {d['name']!r} is {np.dtype(d['dtype']).name}, not int8: convert "
                             "the model with `basilar convert`")
    if tuple(state[0]["shape"]) != tuple(new_state[0]["shape"]):
        raise ValueError("step model state input and output shapes differ")
    return frame[0], state[0], scores[0], new_state[0]


def check_step_model(bundle) -> None:
    """Raise BundleError unless the bundle's step model loads, matches its front end, and runs."""
    from edge.bundle import BundleError

    try:
        StepRunner(bundle).step(np.zeros(bundle.frontend_config.features, np.int8))
    except RuntimeUnavailable:
        raise
    except ValueError as exc:
        raise BundleError(str(exc)) from None
