"""Bundles: loading checks, archives (deterministic and safe), and clear errors for every mismatch."""
import io
import json
import shutil
import tarfile

import pytest

from edge.bundle import BundleError, bundle_id, extract_archive, load_bundle, pack_bundle
from edge.frontend import FrontendConfig


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    dest = tmp_path / "b"
    shutil.copytree(tiny_bundle, dest)
    return dest


def rewrite_manifest(bundle_dir, change):
    path = bundle_dir / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_tiny_bundle_loads_and_runs(tiny_bundle):
    b = load_bundle(tiny_bundle)
    assert b.labels == [str(d) for d in range(10)]
    assert b.id == bundle_id(tiny_bundle)
    assert b.frontend_config.sample_rate == 8000
    assert b.manifest["quantization"]["frame"]["scale"] == pytest.approx(1.0)
    assert b.manifest["quantization"]["frame"]["zero_point"] == 0
    assert "CC BY-SA 4.0" in (tiny_bundle / "ATTRIBUTION.md").read_text()


def test_archive_round_trip_is_deterministic(tiny_bundle, tmp_path):
    a, b = tmp_path / "a.tar.gz", tmp_path / "b.tar.gz"
    assert pack_bundle(tiny_bundle, a) == pack_bundle(tiny_bundle, b) == load_bundle(tiny_bundle).id
    assert a.read_bytes() == b.read_bytes()
    assert load_bundle(a).id == load_bundle(tiny_bundle).id
    assert bundle_id(a) == bundle_id(tiny_bundle)


def test_bundle_pack_command_writes_the_archive_and_refuses_a_damaged_directory(bundle_copy, tmp_path):
    from click.testing import CliRunner

    from firmware_tools.cli import main

    archive = tmp_path / "out.tar.gz"
    packed = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(archive)])
    assert packed.exit_code == 0, packed.output
    assert packed.output.strip() == f"{archive}: bundle {load_bundle(bundle_copy).id}"
    assert load_bundle(archive).id == load_bundle(bundle_copy).id
    inspected = CliRunner().invoke(main, ["bundle", "inspect", str(archive), "--json"])
    assert inspected.exit_code == 0
    assert json.loads(inspected.output)["name"] == load_bundle(bundle_copy).manifest["name"]

    (bundle_copy / "ATTRIBUTION.md").unlink()
    refused = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(tmp_path / "bad.tar.gz")])
    assert refused.exit_code == 1 and "ATTRIBUTION.md" in refused.output and "missing" in refused.output
    assert not (tmp_path / "bad.tar.gz").exists()


def test_bundle_pack_never_replaces_a_file_that_is_not_a_bundle_archive(bundle_copy, tmp_path):
    """As `basilar convert --out X.tar.gz`: an earlier bundle archive may be replaced, a backup of other things never
    (pack once wrote over any file, exit 0)."""
    from click.testing import CliRunner

    from edge.bundle import DEFAULT_BUNDLE
    from firmware_tools.cli import main

    backup = tmp_path / "backup.tar.gz"
    with tarfile.open(backup, "w:gz") as tar:
        tar.add(bundle_copy / "ATTRIBUTION.md", arcname="stuff/important")
    before = backup.read_bytes()
    result = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(backup)])
    assert result.exit_code == 1 and f"{backup} already exists and is not a basilar bundle archive" in result.output
    assert "nothing was written" in result.output and backup.read_bytes() == before
    earlier = tmp_path / "earlier.tar.gz"
    pack_bundle(DEFAULT_BUNDLE, earlier)
    result = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(earlier)])
    assert result.exit_code == 0, result.output
    assert load_bundle(earlier).id == load_bundle(bundle_copy).id


def test_bundle_pack_never_replaces_an_archive_whose_manifest_json_is_another_programs(bundle_copy, tmp_path):
    """A browser extension's archive holds a manifest.json too: pack took any manifest.json for a bundle's."""
    from click.testing import CliRunner

    from firmware_tools.cli import main

    extension = tmp_path / "extension.tar.gz"
    (tmp_path / "manifest.json").write_text(json.dumps({"manifest_version": 3, "name": "An extension"}))
    with tarfile.open(extension, "w:gz") as tar:
        tar.add(tmp_path / "manifest.json", arcname="manifest.json")
        tar.add(bundle_copy / "ATTRIBUTION.md", arcname="background.js")
    before = extension.read_bytes()
    result = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(extension)])
    assert result.exit_code == 1, result.output
    assert f"{extension} already exists and is not a basilar bundle archive (its manifest.json is another " \
           "program's: it lacks 'schema_version'" in result.output
    assert "nothing was written" in result.output and extension.read_bytes() == before


def test_a_pack_that_runs_out_of_space_leaves_the_earlier_archive_as_it_was(bundle_copy, tmp_path):
    """The archive was written in place: a full disk left a truncated archive where a good one had been, and the
    error was a bare "[Errno 28] No space left on device" naming no file."""
    import os
    import subprocess

    from click.testing import CliRunner

    from firmware_tools.cli import main
    from tests.conftest import require

    require(os.geteuid() == 0, "root, to mount a small tmpfs as a full disk")
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], check=True)
    try:
        archive = disk / "b.tar.gz"
        pack_bundle(bundle_copy, archive)
        before = archive.read_bytes()
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        (disk / "filler").write_bytes(bytes(free - len(before) // 2))  # room for half an archive
        result = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(archive)])
        assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.output
        assert f"cannot write the archive {archive}: No space left on device; {archive} is as it was; free space " \
               f"in {disk}" in result.output
        assert archive.read_bytes() == before and sorted(p.name for p in disk.iterdir()) == ["b.tar.gz", "filler"]
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _lengthen_model_name(bundle_dir, length):
    """The step model under a name of `length` characters, the manifest saying so (every hash still right)."""
    name = "m" * (length - len(".tflite")) + ".tflite"
    (bundle_dir / "model_step.tflite").rename(bundle_dir / name)

    def rename(manifest):
        manifest["files"][name] = manifest["files"].pop("model_step.tflite")
        manifest["models"]["step"]["file"] = name

    rewrite_manifest(bundle_dir, rename)


def _list_many_files(bundle_dir, count):
    import hashlib

    def add(manifest):
        for k in range(count):
            (bundle_dir / f"note{k}.txt").write_text("x")
            manifest["files"][f"note{k}.txt"] = hashlib.sha256(b"x").hexdigest()

    rewrite_manifest(bundle_dir, add)


@pytest.mark.parametrize("change, message", [
    (lambda b: _lengthen_model_name(b, 124), "the name 'mmmmmmmmmmmmmmmmmmmmmmmm'... is 124 characters long; a "
                                             "bundle's file names have 100 at most"),
    (lambda b: _list_many_files(b, 62), "manifest.json lists 64 files, 65 with the manifest itself; a bundle has at "
                                        "most 64"),
])
def test_a_bundle_no_archive_loader_takes_neither_verifies_nor_packs(bundle_copy, tmp_path, change, message):
    """pack wrote an archive that every loader refused (a 124-character file name, 65 entries), and verify of the
    folder passed it."""
    from click.testing import CliRunner

    from firmware_tools.cli import main

    change(bundle_copy)
    verified = CliRunner().invoke(main, ["bundle", "verify", str(bundle_copy)])
    assert verified.exit_code == 1 and message in verified.output, verified.output
    assert "so no archive of it would load" in verified.output
    archive = tmp_path / "b.tar.gz"
    packed = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(archive)])
    assert packed.exit_code == 1 and message in packed.output and not archive.exists(), packed.output
    with pytest.raises(BundleError, match="so no archive of it would load"):
        pack_bundle(bundle_copy, archive)  # the archive's own limits, not only the load before it
    assert not archive.exists()


def test_a_bundle_folder_larger_than_an_archive_may_unpack_to_is_refused(bundle_copy, tmp_path, monkeypatch):
    import edge.bundle

    size = sum(path.stat().st_size for path in bundle_copy.iterdir())
    monkeypatch.setattr(edge.bundle, "MAX_ARCHIVE_BYTES", size - 1)
    with pytest.raises(BundleError, match=f"the files of {bundle_copy} come to {size} bytes; a bundle has at most "
                                          f"{size - 1}"):
        load_bundle(bundle_copy)
    with pytest.raises(BundleError, match="so no archive of it would load"):
        pack_bundle(bundle_copy, tmp_path / "b.tar.gz")
    assert not (tmp_path / "b.tar.gz").exists()


def test_bundle_pack_into_a_missing_folder_says_to_create_it(bundle_copy, tmp_path):
    from click.testing import CliRunner

    from firmware_tools.cli import main

    archive = tmp_path / "no" / "such" / "b.tar.gz"
    result = CliRunner().invoke(main, ["bundle", "pack", str(bundle_copy), str(archive)])
    assert result.exit_code == 1, result.output
    assert (f"{archive}: there is no folder {archive.parent}; nothing was written: create it first "
            f"(mkdir -p {archive.parent})") in result.output and "Errno" not in result.output
    assert not (tmp_path / "no").exists()


def test_corrupt_model_file_is_named(bundle_copy):
    model = bundle_copy / "model_step.tflite"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="model_step.tflite.*corrupt"):
        load_bundle(bundle_copy)


def test_missing_file_is_named(bundle_copy):
    (bundle_copy / "ATTRIBUTION.md").unlink()
    with pytest.raises(BundleError, match="ATTRIBUTION.md.*missing"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m.update(files=[]), "files must be a JSON object, not \\[\\]"),
    (lambda m: m.update(labels="0123456789"), "labels must be a JSON array"),
    (lambda m: m.update(frontend=[]), "frontend must be a JSON object, not \\[\\]"),
    # Each named as written: these said "frontend.config ... not null", "models.step ... not null"
    (lambda m: m.update(frontend="x"), 'frontend must be a JSON object, not "x"'),
    (lambda m: m.update(models=[]), "models must be a JSON object, not \\[\\]"),
    (lambda m: m["models"]["step"].pop("file"), "models.step.file is missing"),
    (lambda m: m["models"].update(step="model_step.tflite"), "models.step must be a JSON object"),
    (lambda m: m["files"].update({"model_step.tflite": 7}), "files must map names to SHA-256 strings"),
])
def test_a_manifest_of_the_wrong_shape_is_named_not_a_traceback(bundle_copy, change, message):
    rewrite_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=f"manifest.json: {message}.*rebuild it"):
        load_bundle(bundle_copy)


def test_detector_thresholds_that_are_no_object_are_named_as_written(bundle_copy):
    """They said "cannot convert dictionary update sequence element #0 to a sequence"."""
    from edge.detector import DetectorSettings, DetectorSettingsError

    rewrite_manifest(bundle_copy, lambda m: m["detector"].update(thresholds=[0.5]))
    with pytest.raises(BundleError, match=r"detector settings are invalid: thresholds=\[0.5\]: must be an object of "
                                          r"per-label thresholds, as \{\"yes\": 0.8\}"):
        load_bundle(bundle_copy)
    with pytest.raises(DetectorSettingsError, match=r"thresholds=\[0.5\]: must be an object"):  # run --threshold-for
        DetectorSettings.from_manifest({"thresholds": [0.5]}, hop_ms=10, thresholds={"0": 0.5})


def test_a_front_end_field_the_manifest_leaves_out_is_named_not_its_default(bundle_copy):
    """An 8 kHz bundle without f_high was refused as "f_high=7000.0 Hz is at or above Nyquist", a value the manifest
    never states."""
    rewrite_manifest(bundle_copy, lambda m: m["frontend"]["config"].pop("f_high"))
    with pytest.raises(BundleError, match="front-end config is invalid: frontend.config has no f_high, and the default "
                                          "does not fit the rest: f_high=7000.0 Hz is at or above Nyquist"):
        load_bundle(bundle_copy)


def test_inspect_shows_a_bundle_whose_manifest_leaves_out_what_has_a_default(bundle_copy):
    from click.testing import CliRunner

    from firmware_tools.cli import main

    def sparse(m):
        m["models"]["step"]["spec"] = None
        del m["frontend"]["config"]["f_low"]  # the default, so the hash still matches

    rewrite_manifest(bundle_copy, sparse)
    result = CliRunner().invoke(main, ["bundle", "inspect", str(bundle_copy)])
    assert result.exit_code == 0, result.output
    assert "100-" in result.output and "width None" in result.output


def test_schema_version_mismatch(bundle_copy):
    rewrite_manifest(bundle_copy, lambda m: m.update(schema_version=99))
    with pytest.raises(BundleError, match="schema version 99"):
        load_bundle(bundle_copy)


def test_frontend_hash_mismatch(bundle_copy):
    def other_frontend(m):
        m["frontend"]["config"]["f_low"] = 150.0  # hash left as it was

    rewrite_manifest(bundle_copy, other_frontend)
    with pytest.raises(BundleError, match="front-end hash does not match"):
        load_bundle(bundle_copy)


def test_model_input_must_match_frontend_channels(bundle_copy):
    def more_channels(m):
        cfg = FrontendConfig.from_dict({**m["frontend"]["config"], "channels": 40})
        m["frontend"]["config"], m["frontend"]["hash"] = cfg.to_dict(), cfg.hash()

    rewrite_manifest(bundle_copy, more_channels)
    # 40 channels and their spectral view; shapes as plain numbers, not np.int32(64)
    with pytest.raises(BundleError, match=r"frames of shape \(1, 64\), but .* makes 80 values per frame"):
        load_bundle(bundle_copy)


def test_not_a_bundle(tmp_path):
    with pytest.raises(BundleError, match="no bundle at"):
        load_bundle(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="not a basilar bundle"):
        load_bundle(tmp_path / "empty")
    (tmp_path / "junk.tar.gz").write_bytes(b"not gzip at all")
    with pytest.raises(BundleError, match="not a readable .tar.gz"):
        load_bundle(tmp_path / "junk.tar.gz")


def _archive(tmp_path, add):
    path = tmp_path / "evil.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        add(tar)
    return path


def _file(tar, name, data=b"x"):
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("name", ["../escape.txt", "/etc/passwd", "sub/dir.txt", ".hidden"])
def test_archive_paths_outside_are_refused(tmp_path, name):
    archive = _archive(tmp_path, lambda tar: _file(tar, name))
    with pytest.raises(BundleError, match="not a plain file name"):
        extract_archive(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_archive_links_are_refused(tmp_path):
    def add(tar):
        link = tarfile.TarInfo("manifest.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)

    with pytest.raises(BundleError, match="not a regular file"):
        extract_archive(_archive(tmp_path, add), tmp_path / "out")


def test_archive_size_limit(tmp_path, monkeypatch):
    import edge.bundle

    monkeypatch.setattr(edge.bundle, "MAX_ARCHIVE_BYTES", 1000)
    archive = _archive(tmp_path, lambda tar: _file(tar, "big.bin", b"\0" * 5000))
    with pytest.raises(BundleError, match="more than 1000 bytes"):
        extract_archive(archive, tmp_path / "out")


def test_a_hostile_archive_is_refused_as_it_is_read_not_after(tmp_path, monkeypatch):
    """A header declaring more than a bundle may hold, or entries past the count, stop the reading there: a
    small archive must not cost the device gigabytes or minutes before the limits apply."""
    import edge.bundle

    monkeypatch.setattr(edge.bundle, "MAX_ARCHIVE_BYTES", 100_000)
    with tarfile.open(tmp_path / "long.tar.gz", "w:gz", format=tarfile.GNU_FORMAT) as tar:
        _file(tar, "n" * 2_000_000)  # a GNU long-name header of 2 MB, read whole by tarfile
    assert (tmp_path / "long.tar.gz").stat().st_size < 20_000
    with pytest.raises(BundleError, match="unpacks to more than 100000 bytes"):
        extract_archive(tmp_path / "long.tar.gz", tmp_path / "out1")
    read = []
    real_next = tarfile.TarFile.next
    monkeypatch.setattr(tarfile.TarFile, "next", lambda self: read.append(1) or real_next(self))
    many = _archive(tmp_path, lambda tar: [_file(tar, f"f{i}") for i in range(5000)])
    with pytest.raises(BundleError, match="more than 64 entries"):
        extract_archive(many, tmp_path / "out2")
    assert len(read) <= 66  # the 65th refused (tarfile reads the first one when it opens), not the 5,000


def test_an_archive_whose_manifest_is_larger_than_a_bundle_is_refused_before_it_is_read(tmp_path):
    """archive_manifest (bundle_id: the device's install of an upload, a serial deploy; `bundle pack` over an
    archive) read manifest.json whole, with no limit: a small archive had it hold gigabytes in memory."""
    from edge.bundle import MAX_ARCHIVE_BYTES

    def add(tar):
        info = tarfile.TarInfo("manifest.json")
        info.size = MAX_ARCHIVE_BYTES + 1
        with open("/dev/zero", "rb") as zeros:
            tar.addfile(info, zeros)

    archive = _archive(tmp_path, add)
    assert archive.stat().st_size < 1_000_000  # zeros pack small
    with pytest.raises(BundleError, match=f"manifest.json is {MAX_ARCHIVE_BYTES + 1} bytes, more than a bundle may "
                                          r"hold \(67108864; a manifest is a few KB\)"):
        bundle_id(archive)


@pytest.mark.parametrize("link", [tarfile.LNKTYPE, tarfile.SYMTYPE])
def test_an_archive_whose_manifest_is_a_link_is_refused_before_it_is_read(tmp_path, link):
    """A link's size is 0, so the size check passed it, and the member it names was read whole, whatever its size."""
    def add(tar):
        big = tarfile.TarInfo("model.tflite")
        big.size = 8_000_000
        with open("/dev/zero", "rb") as zeros:
            tar.addfile(big, zeros)
        info = tarfile.TarInfo("manifest.json")
        info.type, info.linkname = link, "model.tflite"
        tar.addfile(info)

    archive = _archive(tmp_path, add)
    with pytest.raises(BundleError, match="its manifest.json is not a plain file"):
        bundle_id(archive)


def test_thousands_of_chained_long_name_headers_are_a_clear_refusal(tmp_path):
    import gzip

    link = tarfile.TarInfo("././@LongLink")
    link.type, link.size = tarfile.GNUTYPE_LONGNAME, 4
    header = link._create_header(link.get_info(), tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    last = tarfile.TarInfo("x")
    last.size = 1
    data = (header + b"abc\0".ljust(512, b"\0")) * 3000 + last.tobuf(format=tarfile.GNU_FORMAT) + \
        b"x".ljust(512, b"\0") + b"\0" * 1024
    (tmp_path / "chain.tar.gz").write_bytes(gzip.compress(data))
    with pytest.raises(BundleError, match="not a readable .tar.gz bundle archive .maximum recursion"):  # one per header
        extract_archive(tmp_path / "chain.tar.gz", tmp_path / "out")


def test_truncated_archive(tiny_bundle, tmp_path):
    good = tmp_path / "good.tar.gz"
    pack_bundle(tiny_bundle, good)
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(BundleError, match="truncated or corrupt|not a readable"):
        load_bundle(cut)


def test_the_shipped_bundle_carries_the_detector_that_train_writes():
    """The shipped detector was re-tuned without retraining (docs/models.md); `basilar train` writes the same."""
    from edge.bundle import DEFAULT_BUNDLE
    from firmware_tools.bundler import DEFAULT_DETECTOR

    assert load_bundle(DEFAULT_BUNDLE).manifest["detector"] == DEFAULT_DETECTOR


def test_pack_leaves_out_files_the_manifest_does_not_list(bundle_copy, tmp_path):
    """A .DS_Store (or any stray file) is no part of the bundle: the archive holds the manifest, the files it lists
    and the signature, so the device accepts it (it refuses dotfiles) and nothing unverified reaches it."""
    (bundle_copy / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (bundle_copy / "notes.txt").write_text("not listed in the manifest")
    (bundle_copy / "signature.json").write_text("{}")  # `bundle pack` refuses it (test_signing); pack_bundle packs it
    archive = tmp_path / "out.tar.gz"
    pack_bundle(bundle_copy, archive)
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    listed = json.loads((bundle_copy / "manifest.json").read_text())["files"]
    assert names == sorted(["manifest.json", "signature.json", *listed])
    assert extract_archive(archive, tmp_path / "out").is_dir()  # what the device does first
    assert load_bundle(archive).id == load_bundle(bundle_copy).id
    pack_bundle(bundle_copy, tmp_path / "again.tar.gz")
    (bundle_copy / ".DS_Store").unlink()
    (bundle_copy / "notes.txt").unlink()
    pack_bundle(bundle_copy, tmp_path / "clean.tar.gz")
    assert (tmp_path / "again.tar.gz").read_bytes() == (tmp_path / "clean.tar.gz").read_bytes()


def _corruptions(good: bytes):
    """Every 97th byte with one bit flipped, and cuts at several lengths."""
    for pos in range(0, len(good), 97):
        data = bytearray(good)
        data[pos] ^= 0x10
        yield bytes(data)
    for cut in (10, 100, len(good) // 3, len(good) // 2, len(good) - 100):
        yield good[:cut]


def test_corrupt_archives_give_a_clear_error_never_a_traceback(tmp_path):
    from edge.bundle import DEFAULT_BUNDLE

    good = tmp_path / "good.tar.gz"
    pack_bundle(DEFAULT_BUNDLE, good)
    bad = tmp_path / "bad.tar.gz"
    named = 0
    for data in _corruptions(good.read_bytes()):
        bad.write_bytes(data)
        for attempt in (lambda: extract_archive(bad, tmp_path / "out"), lambda: bundle_id(bad),
                        lambda: load_bundle(bad, check_model=False)):
            try:
                attempt()
            except BundleError as exc:
                named += "corrupt" in str(exc) or "not a readable" in str(exc)
            shutil.rmtree(tmp_path / "out", ignore_errors=True)
    assert named > 0


def test_verify_and_deploy_name_a_corrupt_archive(tmp_path):
    """A flipped bit in the compressed stream (zlib: invalid distances set) or a cut file."""
    import zlib

    from click.testing import CliRunner

    from edge.bundle import DEFAULT_BUNDLE
    from firmware_tools.cli import main

    good = tmp_path / "good.tar.gz"
    pack_bundle(DEFAULT_BUNDLE, good)
    bad = tmp_path / "bad.tar.gz"
    broken = []
    for data in _corruptions(good.read_bytes()):
        bad.write_bytes(data)
        try:
            with tarfile.open(bad, "r:gz") as tar:
                for member in tar:
                    tar.extractfile(member).read()
        except (zlib.error, EOFError, tarfile.TarError, OSError) as exc:
            broken.append((data, type(exc).__name__))
    kinds = {kind for _, kind in broken}
    assert {"error", "EOFError"} <= kinds, kinds  # zlib.error is named "error"
    for kind in ("error", "EOFError", "ReadError"):
        data = next((data for data, k in broken if k == kind), None)
        if data is None:
            continue
        bad.write_bytes(data)
        for args in (["bundle", "verify", str(bad)], ["deploy", str(bad), "ssh://pi@127.0.0.1/opt/basilar"]):
            result = CliRunner().invoke(main, args)
            assert result.exit_code == 1 and "corrupt" in result.output and "copy it again" in result.output, \
                (kind, args, result.output, result.exception)


def test_a_bundle_file_that_cannot_be_read_is_a_bundle_error(bundle_copy, monkeypatch):
    """A failing SD card (EIO) or a file the service user may not read: a clear refusal, not a traceback."""
    import errno

    import edge.bundle as bundle_module

    readable = bundle_module.file_sha256

    def unreadable(path):
        if path.suffix == ".tflite":
            raise OSError(errno.EIO, "Input/output error", str(path))
        return readable(path)

    monkeypatch.setattr(bundle_module, "file_sha256", unreadable)
    with pytest.raises(BundleError, match=r"cannot read bundle file 'model_step.tflite' in .*Input/output error"):
        load_bundle(bundle_copy)


def test_labels_that_do_not_fit_the_model_are_refused(bundle_copy):
    """Nine labels for a model of ten and the background: the last label's posterior would be dropped unread."""
    rewrite_manifest(bundle_copy, lambda m: m.update(labels=m["labels"][:-1]))
    with pytest.raises(BundleError, match="the step model has 11 outputs, but the bundle names 9 labels"):
        load_bundle(bundle_copy)


def test_pack_refuses_an_archive_inside_the_bundle_or_named_as_nothing_loads(bundle_copy, tmp_path):
    before = (bundle_copy / "manifest.json").read_bytes()
    with pytest.raises(BundleError, match="write the archive outside the bundle folder"):
        pack_bundle(bundle_copy, bundle_copy / "manifest.json.tar.gz")
    with pytest.raises(BundleError, match=r"name the archive out.bundle.tar.gz"):
        pack_bundle(bundle_copy, tmp_path / "out.bundle")
    assert (bundle_copy / "manifest.json").read_bytes() == before and not (tmp_path / "out.bundle").exists()


@pytest.mark.parametrize("change, where", [
    (lambda m: m.update(provenance="x"), "provenance must be a JSON object"),
    (lambda m: m["models"]["step"].update(spec="x"), "models.step.spec must be a JSON object"),
    (lambda m: m["models"]["step"]["spec"].update(branches="2"), "models.step.spec.branches must be a JSON integer"),
    (lambda m: m.update(name=5), "name must be a JSON string, not 5"),
    (lambda m: m.update(basilar_version={"major": 0}), "basilar_version must be a JSON string"),
    (lambda m: m.update(created=20261205), "created must be a JSON string"),
])
def test_optional_manifest_sections_of_the_wrong_type_are_refused_not_a_crash_later(bundle_copy, change, where):
    """`bundle verify` passed these and `bundle inspect` then crashed on them, or printed them as they were."""
    rewrite_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=where):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("change, message", [
    (lambda m: m["detector"].update(thresholds={"zz": 0.5}), "unknown label.*'zz'"),  # run refused it; install didn't
    (lambda m: m["detector"].update(smoothing_ms=1e12), "smoothing_ms=.*at most 2000"),  # run asked for 7 TiB
    (lambda m: m.update(labels=["0", "0", *m["labels"][2:]]), "labels must be distinct.*'0' twice"),
    (lambda m: m.update(schema_version=True), "schema version True"),
])
def test_a_bundle_the_device_could_not_run_does_not_verify(bundle_copy, change, message):
    """What `bundle verify` and a device's install pass, `basilar run` must start with."""
    rewrite_manifest(bundle_copy, change)
    with pytest.raises(BundleError, match=message):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("text, message", [
    ("[" * 100000 + "]" * 100000, "nested too deeply"),
    ('{"schema_version": ' + "9" * 5000 + "}", "a number of thousands of digits"),  # past Python's 4,300
    ('{"schema_version": NaN}', "NaN is not a JSON value"),
], ids=["deep", "long number", "NaN"])
def test_a_manifest_python_reads_badly_is_not_valid_json(bundle_copy, text, message):
    (bundle_copy / "manifest.json").write_text(text)
    with pytest.raises(BundleError, match=f"manifest.json is not valid JSON.*{message}"):
        load_bundle(bundle_copy)


def test_a_manifest_that_cannot_be_read_is_named(bundle_copy):
    (bundle_copy / "manifest.json").unlink()
    (bundle_copy / "manifest.json").mkdir()
    with pytest.raises(BundleError, match="cannot read .*manifest.json: Is a directory"):
        load_bundle(bundle_copy)


@pytest.mark.parametrize("left_out, message", [("ATTRIBUTION.md", "'ATTRIBUTION.md' listed in the manifest is "
                                                                    "missing from {archive}"),
                                               ("manifest.json", "{archive} has no manifest.json")])
def test_an_archive_is_named_in_errors_not_the_folder_it_was_unpacked_into(bundle_copy, tmp_path, left_out, message):
    archive = tmp_path / "b.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for path in sorted(bundle_copy.iterdir()):
            if path.name != left_out:
                tar.add(path, arcname=path.name)
    with pytest.raises(BundleError) as err:
        load_bundle(archive)
    assert message.format(archive=archive) in str(err.value) and "basilar-bundle-" not in str(err.value), err.value


def test_an_archive_that_does_not_fit_the_temporary_folder_says_so(tiny_bundle, tmp_path, monkeypatch):
    """A small device's /tmp may be a few MB of RAM: a full disk is said as one, not as a traceback."""
    import errno

    archive = tmp_path / "b.tar.gz"
    pack_bundle(tiny_bundle, archive)
    real_open = open

    def full_disk(path, mode="r", *args, **kwargs):
        if "w" in mode and "basilar-bundle-" in str(path):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", full_disk)
    with pytest.raises(BundleError, match=f"cannot unpack {archive} into .*No space left on device.*TMPDIR"):
        load_bundle(archive, check_model=False)


def test_an_entry_name_longer_than_any_bundle_file_is_refused(tmp_path):
    archive = tmp_path / "long.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("x" * 300)
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(BundleError, match="300 characters long"):
        extract_archive(archive, tmp_path / "out")


def test_a_model_file_that_is_no_tflite_model_is_said_so_not_blamed_on_the_runtime(bundle_copy):
    import hashlib

    model = bundle_copy / "model_step.tflite"
    model.write_bytes(b"garbage" * 100)
    rewrite_manifest(bundle_copy, lambda m: m["files"].update(
        {"model_step.tflite": hashlib.sha256(model.read_bytes()).hexdigest()}))
    with pytest.raises(BundleError, match="not a TFLite model.*rebuild the bundle") as err:
        load_bundle(bundle_copy)
    assert "no working TFLite interpreter" not in str(err.value)


def test_verify_warns_of_a_detector_setting_it_does_not_know(bundle_copy):
    """Unknown settings are ignored so that newer bundles load; a misspelt one must not pass unseen."""
    from click.testing import CliRunner

    from firmware_tools.cli import main

    rewrite_manifest(bundle_copy, lambda m: m["detector"].update(threshhold=0.5))
    result = CliRunner().invoke(main, ["bundle", "verify", str(bundle_copy)])
    assert result.exit_code == 0 and result.output.startswith("warning: the detector setting 'threshhold' is not one "
                                                              "this basilar knows"), result.output
    assert "ok: bundle" in result.output
