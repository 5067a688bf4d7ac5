"""FrontendConfig validation, its stable hash, and the errors the front end gives for bad audio."""
import dataclasses
import hashlib
import json

import numpy as np
import pytest

from cython_kernels import frames_golden
from edge.frontend import FRONTEND_ALGORITHM, Frontend, FrontendConfig, FrontendConfigError
from edge.frontend.design import design
from edge.frontend.state import FrontendState

# The hash a bundle records for the default configuration. If this changes, every bundle trained with the default
# front end is refused by devices: change it only together with FRONTEND_ALGORITHM, on purpose.
DEFAULT_HASH = "2035168b7dff2dec92af000bda2edd6ad0192cb03329d92d49de7e2a6763dfb6"


def test_default_config_hash_is_stable():
    assert FrontendConfig().hash() == DEFAULT_HASH


def test_hash_is_sha256_of_the_canonical_json_of_fields_and_algorithm():
    config = FrontendConfig()
    canonical = {"algorithm": FRONTEND_ALGORITHM, **{k: v for k, v in dataclasses.asdict(config).items()}}
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    assert config.hash() == hashlib.sha256(blob).hexdigest()


# One valid change per field, so a field left out of the hash is caught.
CHANGES = {
    "sample_rate": 22050 * 2,  # 44100 Hz: 441 samples per hop
    "channels": 33,
    "f_low": 101.0,
    "f_high": 6999.0,
    "hop_ms": 20.0,
    "window_ms": 30.0,
    "release_db_per_s": 11.0,
    "floor_dbfs": -69.0,
    "spectral_norm_s": 1.0,
}


def test_every_field_is_covered_by_the_table_of_changes():
    assert set(CHANGES) == {f.name for f in dataclasses.fields(FrontendConfig)}


@pytest.mark.parametrize("field", list(CHANGES))
def test_hash_changes_when_any_field_changes(field):
    changed = dataclasses.replace(FrontendConfig(), **{field: CHANGES[field]})
    assert changed.hash() != DEFAULT_HASH
    assert len(changed.hash()) == 64 and int(changed.hash(), 16) >= 0


def test_hash_depends_on_values_not_on_how_they_were_written():
    assert FrontendConfig(f_low=100, f_high=7000, hop_ms=10).hash() == DEFAULT_HASH
    round_trip = FrontendConfig.from_dict(json.loads(json.dumps(FrontendConfig(channels=64).to_dict())))
    assert round_trip == FrontendConfig(channels=64) and round_trip.hash() == FrontendConfig(channels=64).hash()
    off = FrontendConfig(spectral_norm_s=0.0)
    assert FrontendConfig(spectral_norm_s=-0.0) == off and FrontendConfig(spectral_norm_s=-0.0).hash() == off.hash()


def test_numpy_numbers_configure_hash_and_serialise_as_plain_ones():
    plain = FrontendConfig(sample_rate=8000, channels=32, f_high=3800.0, spectral_norm_s=1.28)
    from_numpy = FrontendConfig(sample_rate=np.int32(8000), channels=np.int64(32), f_high=np.float32(3800.0),
                                spectral_norm_s=np.float64(1.28))
    assert from_numpy == plain and from_numpy.hash() == plain.hash()
    assert json.loads(json.dumps(from_numpy.to_dict())) == plain.to_dict()  # what a manifest writes


def test_a_poor_design_is_named_but_a_bundle_recorded_with_it_still_loads():
    """A 20 Hz channel at 48 kHz (77 dB against the float filters) and a spectral memory of 10,000 hops (its
    integer average drifts) run exactly, so a recorded configuration with them loads; new designs name them."""
    low = FrontendConfig.from_dict({**FrontendConfig().to_dict(), "sample_rate": 48000, "f_low": 20.0})
    assert low.design_problems() == ["f_low=20.0 Hz: at sample_rate=48000 use at least 30 Hz; lower channels lose "
                                     "the integer filters' 80 dB of accuracy"]
    long_memory = FrontendConfig(hop_ms=1.0, window_ms=2.0, spectral_norm_s=10.0)
    [problem] = long_memory.design_problems()
    assert problem.startswith("spectral_norm_s=10.0: 10000 hops of hop_ms=1.0; ") and "use at most 1 s" in problem
    # At hops under 0.1 ms no memory fits 1,000 hops and the shortest allowed memory, 0.1 s: it said "use at
    # most 0.0625 s", which is then refused.
    [problem] = FrontendConfig(hop_ms=0.0625, window_ms=0.125, spectral_norm_s=0.1).design_problems()
    assert problem.endswith("use a hop of at least 0.1 ms")
    exactly = FrontendConfig(sample_rate=32040, hop_ms=25.0, window_ms=50.0, f_low=32040 / 1600, f_high=15000.0)
    assert exactly.design_problems() == []  # sample_rate * (1 / 1600) came out a hair above 32040 / 1600
    assert FrontendConfig().design_problems() == [] and FrontendConfig(hop_ms=1.0, window_ms=2.0,
                                                                        spectral_norm_s=1.0).design_problems() == []


def test_config_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        FrontendConfig().channels = 64


def test_derived_sizes():
    config = FrontendConfig(sample_rate=48000, hop_ms=5.0, window_ms=25.0)
    assert (config.hop_samples, config.window_hops, config.frames_per_second) == (240, 5, 200.0)


@pytest.mark.parametrize("fields, names_the_fix", [
    ({"f_high": 8000.0}, "at or above Nyquist.*lower f_high or raise sample_rate"),
    ({"sample_rate": 8000, "f_high": 4100.0}, "at or above Nyquist"),
    ({"channels": 4}, "channels=4: use 8 to 128"),
    ({"channels": 200}, "use 8 to 128"),
    ({"channels": 32.0}, r"channels=32.0: must be a whole number \(an int\), 8 to 128"),  # not "use 8 to 128"
    ({"sample_rate": 22050}, "hop_ms=10.0: must give a whole number of samples.*220.5"),
    ({"hop_ms": 0.0}, "hop_ms"),
    ({"window_ms": 15.0}, "window_ms=15.0: must be 1 to 16 whole hops"),
    ({"sample_rate": 96000}, "integer rate from 8000 to 48000 Hz.*resample"),
    ({"sample_rate": 16000.0}, "integer rate"),
    ({"f_low": 10.0}, "f_low=10.0 Hz: must be at least 20 Hz"),
    ({"f_low": 7000.0}, "below f_high"),
    ({"f_low": float("nan")}, "f_low=nan: must be a finite number"),
    ({"release_db_per_s": 0.0}, "release_db_per_s"),
    ({"release_db_per_s": 1e20}, "release_db_per_s=1e\\+20: use a release above 0 and at most 10000 dB/s"),
    ({"release_db_per_s": 8.5e19}, "at most 10000 dB/s"),
    ({"release_db_per_s": 10001.0}, "at most 10000 dB/s"),
    ({"hop_ms": 250.0, "window_ms": 250.0, "spectral_norm_s": 0.1},
     r"spectral_norm_s=0.1: shorter than one hop \(hop_ms=250.0\); use at least 0.25 s or a shorter hop"),
    ({"hop_ms": 200.0, "window_ms": 200.0, "spectral_norm_s": 0.1}, "spectral_norm_s=0.1: shorter than one hop"),
    ({"hop_ms": 1000.0, "window_ms": 1000.0, "spectral_norm_s": 0.4}, "spectral_norm_s=0.4: shorter than one hop"),
    ({"floor_dbfs": 0.0}, "floor_dbfs"),
    ({"hop_ms": 1e20}, "hop_ms=1e\\+20: use a hop above 0 and at most 1000 ms"),  # passed, then overflowed in process
    ({"hop_ms": 0.0625000001}, r"got 1.0000000016\)"),  # was "(got 1)" for a hop refused as not whole
    ({"f_low": "100"}, "f_low='100': must be a number"),
])
def test_bad_configs_name_the_field_and_the_fix(fields, names_the_fix):
    with pytest.raises(FrontendConfigError, match=names_the_fix):
        FrontendConfig(**fields)


@pytest.mark.parametrize("fields", [
    {"hop_ms": 100.0, "window_ms": 100.0, "spectral_norm_s": 0.1},  # the spectral view's memory is one hop
    {"hop_ms": 250.0, "window_ms": 250.0, "spectral_norm_s": 0.25},
    {"release_db_per_s": 10000.0},  # the fastest release allowed
    {"release_db_per_s": 10000.0, "sample_rate": 8000, "channels": 8, "f_high": 3800.0, "hop_ms": 1000.0,
     "window_ms": 16000.0, "spectral_norm_s": 1.0},  # ...with a 1 s hop: under 2^27 per frame
])
def test_configs_at_the_limits_run_bit_exact_with_the_golden_model(fields):
    config = FrontendConfig(**fields)
    coeffs = design(config)
    if config.spectral_norm_s:
        assert coeffs.frames.norm_memory_frames >= 1
    x = np.random.default_rng(3).integers(-3000, 3000, 3 * config.hop_samples).astype(np.int16)
    frontend = Frontend(config)
    frames = frontend.process(x)
    assert frames.shape == (3, config.features)
    expected = frames_golden.process(coeffs.filterbank, coeffs.frames, FrontendState.initial(coeffs), x)
    np.testing.assert_array_equal(frames, expected)


def test_config_errors_are_value_errors_and_unknown_fields_are_named():
    assert issubclass(FrontendConfigError, ValueError)
    with pytest.raises(FrontendConfigError, match=r"unknown front-end field\(s\) \['hop'\]"):
        FrontendConfig.from_dict({"hop": 10})


@pytest.mark.parametrize("samples, names_the_fix", [
    (np.zeros(160, np.float32), "must be int16, got float32: convert with np.clip"),
    (np.zeros(160, np.int32), r"must be int16, got int32: convert with \(x >> 16\).astype\(np.int16\) for 32-bit"),
    (np.zeros(160, np.uint16), r"unsigned 16-bit audio \(silence at 32768\)"),
    (np.zeros(160, ">i2"), r"got >i2: convert with x.astype\(np.int16\) for big-endian int16"),
    ([0, 1, 2], "must be int16, got int64"),
    (np.zeros((160, 2), np.int16), r"1-D mono audio, got shape \(160, 2\): downmix"),
    (np.array([0.0, np.nan, 0.1]), "NaN or infinity: clean the audio"),
    (np.array([np.inf], np.float32), "NaN or infinity"),
])
@pytest.mark.parametrize("method", ["process", "filterbank"])
def test_bad_audio_is_refused_with_the_fix(method, samples, names_the_fix):
    frontend = Frontend()
    with pytest.raises(ValueError, match=names_the_fix):
        getattr(frontend, method)(samples)


def test_a_refused_chunk_leaves_the_stream_untouched():
    x = np.random.default_rng(1).integers(-32768, 32768, 800).astype(np.int16)
    frontend = Frontend()
    first = frontend.process(x[:400])
    with pytest.raises(ValueError):
        frontend.process(x[400:].astype(np.float32))
    np.testing.assert_array_equal(np.concatenate([first, frontend.process(x[400:])]), Frontend().process(x))


def test_non_contiguous_int16_is_accepted():
    x = np.random.default_rng(2).integers(-32768, 32768, 1600).astype(np.int16)
    np.testing.assert_array_equal(Frontend().process(x[::2]), Frontend().process(x[::2].copy()))


@pytest.mark.parametrize("dtype", ["<f2", "<f4", "<f8", "i1", "u1", ">i2", "<u2", "<i4", "<u4", "<i8"])
def test_the_advice_for_audio_that_is_not_int16_converts_it_at_the_same_loudness(dtype):
    """Following the message must give int16 audio at the same loudness: silence at 0 and full scale at the ends
    (the advice for 8-bit audio could not run, and unsigned 32-bit audio came out offset by half its range)."""
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    if np.dtype(dtype).kind == "f":
        x, expected = np.array([-1.0, 0.0, 0.99999], dtype), [-32768, 0, 32767]  # float16: 0.99999 is 1.0
    else:
        middle = (int(info.min) + int(info.max) + 1) // 2  # silence: 0, or half the range for unsigned audio
        top = 32767 if info.bits >= 16 else 127 << 8  # 8-bit full scale is 127/128 of it, exactly as loud
        x, expected = np.array([info.min, middle, info.max], dtype), [-32768, 0, top]
    with pytest.raises(ValueError) as refused:
        Frontend().process(x)
    expression = str(refused.value).split("convert with ", 1)[1].split(" for ", 1)[0]
    converted = eval(expression, {"np": np, "x": x})
    assert converted.dtype == np.int16 and converted.tolist() == expected, expression
