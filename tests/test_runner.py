"""The interpreter shim and the step runner, with a real TFLite interpreter running a real model."""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import edge.runner as runner_module
from edge.bundle import BundleError, load_bundle
from edge.frontend import Frontend
from edge.runner import RuntimeUnavailable, StepRunner, make_interpreter
from tests.bundles import FSDD_CLIPS, requantized_bundle
from tests.conftest import REPO, require_module


def test_a_real_runtime_runs_an_inference(tiny_bundle):
    interpreter, name = make_interpreter(load_bundle(tiny_bundle).step_model_path)
    assert name in {"ai-edge-litert", "tflite-runtime", "tensorflow"}
    out = interpreter.get_output_details()[0]
    assert interpreter.get_tensor(out["index"]).dtype == np.int8


def test_the_delegate_notice_is_held_back_and_every_other_line_passed_on(capfd):
    with runner_module._without_delegate_notice():
        os.write(2, b"before\n" + runner_module.DELEGATE_NOTICE + b"\nWARNING: the runtime's own words\n")
    assert capfd.readouterr().err == "before\nWARNING: the runtime's own words\n"


def test_interpreters_built_in_several_threads_at_once_leave_stderr_working(tiny_bundle, capfd):
    """A bundle swap builds an interpreter in the serial link's thread; the notice filter redirects fd 2 while it
    does, and however many build at once, standard error must end up where it was."""
    model = load_bundle(tiny_bundle).step_model_path
    start_together = threading.Barrier(16)

    def build():
        start_together.wait()
        make_interpreter(model)

    threads = [threading.Thread(target=build) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    os.write(2, b"after\n")  # without the lock, fd 2 is often left pointing at one thread's deleted file
    err = capfd.readouterr().err
    assert err.endswith("after\n") and "XNNPACK" not in err


def test_falls_back_past_a_broken_runtime(tiny_bundle, monkeypatch):
    monkeypatch.setattr(runner_module, "RUNTIMES",
                        (("broken", "basilar_no_such_runtime.interpreter", ""),) + runner_module.RUNTIMES)
    _, name = make_interpreter(load_bundle(tiny_bundle).step_model_path)
    assert name != "broken"


def test_no_runtime_is_a_clear_error(tiny_bundle, monkeypatch):
    monkeypatch.setattr(runner_module, "RUNTIMES", (("broken", "basilar_no_such_runtime.interpreter", ""),))
    with pytest.raises(RuntimeUnavailable, match="pip install ai-edge-litert"):
        make_interpreter(load_bundle(tiny_bundle).step_model_path)


def test_a_damaged_model_is_named_not_the_runtime(tiny_bundle, tmp_path):
    """Cut in half after its TFL3 identifier, a model every runtime refuses: the advice was to install a runtime."""
    whole = load_bundle(tiny_bundle).step_model_path.read_bytes()
    cut = tmp_path / "step.tflite"
    cut.write_bytes(whole[:len(whole) // 2])
    with pytest.raises(ValueError, match="step.tflite cannot be loaded .*the file is damaged") as refused:
        make_interpreter(cut)
    assert "Install one" not in str(refused.value)


def _runner_and_frames(bundle_path, digit: str):
    """A step runner for the bundle, and the front end's frames of a real recording of `digit`."""
    from firmware_tools import dataset

    bundle = load_bundle(bundle_path)
    clip = dataset.read_clip(next(FSDD_CLIPS.glob(f"{digit}_*.wav")), bundle.frontend_config.sample_rate)
    return StepRunner(bundle), Frontend(bundle.frontend_config).process(dataset.to_int16(clip))


def test_step_runner_streams_posteriors(tiny_bundle):
    runner, frames = _runner_and_frames(tiny_bundle, "3")
    first = np.array([runner.step(f) for f in frames])
    assert first.shape == (len(frames), 10)
    assert np.all((first >= 0) & (first <= 1))
    runner.reset()
    again = np.array([runner.step(f) for f in frames])
    np.testing.assert_array_equal(first, again)  # reset really starts over, and inference is deterministic
    assert not np.allclose(first[0], first[-1])  # the state carries: outputs move as the clip goes by


def test_running_many_frames_is_stepping_them_one_by_one(tiny_bundle):
    """`run` (what the pipeline calls per chunk) gives what `step` gives frame by frame, however it is chunked."""
    runner, frames = _runner_and_frames(tiny_bundle, "7")
    one_by_one = np.array([runner.step(f) for f in frames])
    for cuts in ([len(frames)], [1, 2, 7, 30], [13] * (len(frames) // 13 + 1)):
        runner.reset()
        edges = np.minimum(np.cumsum([0, *cuts]), len(frames))
        chunked = np.concatenate([runner.run(frames[a:b]) for a, b in zip(edges[:-1], edges[1:])]
                                 + [runner.run(frames[edges[-1]:])])
        assert chunked.dtype == np.float32
        np.testing.assert_array_equal(chunked, one_by_one)
    assert runner.run(frames[:0]).shape == (0, 10)


def test_a_frame_input_with_another_scale_gets_the_front_ends_frames_requantised(tiny_bundle, tmp_path):
    """A step model reading frames at scale 2 gets round(v / 2) for each front-end value v: its posteriors are the
    original model's on the frames rounded to even values, bit for bit, and far from them without the table."""
    runner, frames = _runner_and_frames(tiny_bundle, "3")
    frames = np.minimum(frames, 126)  # 127 / 2 rounds to 64, which the original model's int8 input cannot hold
    expected = runner.run((2 * np.round(frames / 2)).astype(np.int8))
    rescaled = StepRunner(requantized_bundle(tiny_bundle, tmp_path / "frame-scale-2", frame=(2.0, 0)))
    np.testing.assert_array_equal(rescaled.run(frames), expected)
    rescaled.reset()
    np.testing.assert_array_equal([rescaled.step(f) for f in frames[:5]], expected[:5])
    rescaled.reset()
    rescaled._frame_lut = None
    assert np.abs(rescaled.run(frames) - expected).max() > 0.01


def test_a_state_output_quantised_unlike_the_state_input_is_refused(tiny_bundle, tmp_path):
    with pytest.raises(BundleError, match=r"new-state output is quantised as .* but its state input as .*basilar "
                                          r"convert"):
        requantized_bundle(tiny_bundle, tmp_path / "state-scale-2", new_state=(12 / 255, -128))
    with pytest.raises(BundleError, match="new-state output is quantised"):
        load_bundle(tmp_path / "state-scale-2")


def test_tensorflow_is_a_working_last_fallback():
    """The third runtime imported the module tensorflow.lite, which has no Interpreter (the public tf.lite is an
    attribute of the package), so where the first two were missing basilar said to install a runtime though
    TensorFlow was there; and its built-in-kernels resolver lives under tf.lite.experimental."""
    require_module("tensorflow")
    others_missing = ("import sys\n"
                      "class Missing:\n"
                      "    def find_spec(self, name, path=None, target=None):\n"
                      "        if name.split('.')[0] in ('ai_edge_litert', 'tflite_runtime'):\n"
                      "            raise ImportError('not installed here')\n"
                      "sys.meta_path.insert(0, Missing())\n"
                      "from edge.bundle import load_bundle\n"
                      "from edge.runner import make_interpreter\n"
                      "model = load_bundle('default').step_model_path\n"
                      "print(make_interpreter(model)[1], make_interpreter(model, without_default_delegates=True)[1])\n")
    done = subprocess.run([sys.executable, "-c", others_missing], capture_output=True, text=True, timeout=300,
                          cwd=REPO)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["tensorflow", "tensorflow"]
    assert "tf.lite.Interpreter is deprecated" not in done.stderr
