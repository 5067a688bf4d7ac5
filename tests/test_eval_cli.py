"""`basilar eval BUNDLE DIR`: clip accuracy on labelled WAVs, streamed as on the device."""
import shutil

from click.testing import CliRunner

from firmware_tools.cli import main
from tests.bundles import FSDD_CLIPS


def test_an_unreadable_clip_stops_eval_before_any_clip_is_scored(tiny_bundle, tmp_path, monkeypatch):
    """The clips were read one by one as they were scored: one that cannot be read stopped the run only after the
    others had been streamed through the bundle (minutes on a large folder), and their scores were lost."""
    from edge.runloop import Pipeline

    clips = tmp_path / "clips"
    shutil.copytree(FSDD_CLIPS, clips)
    broken = sorted(clips.glob("*.wav"))[-1]
    broken.write_bytes(b"RIFF\x00\x00\x00\x00WAVEnot audio")
    scored = []
    posteriors = Pipeline.posteriors
    monkeypatch.setattr(Pipeline, "posteriors", lambda self, audio: scored.append(1) or posteriors(self, audio))

    result = CliRunner().invoke(main, ["eval", str(tiny_bundle), str(clips)])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
    assert broken.name in result.output and scored == []
