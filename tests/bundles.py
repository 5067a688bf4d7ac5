"""Real small bundles for tests: an untrained (random-weight) model of the family, converted to int8 TFLite by
the real converter and calibrated with real front-end frames of the repository's FSDD clips."""
from pathlib import Path

FSDD_CLIPS = Path(__file__).resolve().parent / "data" / "fsdd"


def build_tiny_bundle(out_dir: Path, seed: int, width: int = 8) -> Path:
    import keras

    from firmware_tools import dataset, pipeline
    from firmware_tools.bundler import FSDD_PROVENANCE
    from firmware_tools.model import ModelSpec, build_window_model
    from firmware_tools.training import DEFAULT_FRONTEND

    labels = [str(d) for d in range(10)]
    keras.utils.set_random_seed(seed)
    model = build_window_model(ModelSpec(channels=DEFAULT_FRONTEND.features, classes=11, width=width,
                                         dilations=(1, 2, 4)))
    work = out_dir.parent / f"{out_dir.name}-work"
    work.mkdir(parents=True, exist_ok=True)
    model_path = work / "model.keras"
    model.save(model_path)
    clips = dataset.scan_labelled(FSDD_CLIPS)[:12]
    pipeline.convert_into_bundle(model_path, clips, out_dir, DEFAULT_FRONTEND, labels,
                                 provenance=FSDD_PROVENANCE, name=f"tiny-{seed}")
    return out_dir
