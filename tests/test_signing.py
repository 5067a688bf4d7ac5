"""Ed25519 bundle signatures: keys, signing, and the device's policy (edge.signing)."""
import json
import os
import shutil

import pytest

from tests.conftest import require_module

require_module("nacl")

from edge.signing import (SignatureError, check_bundle_signature, check_signature_intact,  # noqa: E402
                          generate_keypair, key_id, read_public_key, sign_bundle_dir, trusted_public_keys)


def _bundle_dir(path, threshold=0.5):
    """Only manifest.json matters to the signature (the manifest's file hashes are load_bundle's job)."""
    path.mkdir(parents=True)
    (path / "manifest.json").write_text(json.dumps({"schema_version": 1, "labels": ["yes", "no"],
                                                    "detector": {"threshold": threshold}}, indent=2))
    return path


@pytest.fixture
def keys(tmp_path):
    trusted = tmp_path / "trusted_keys"
    trusted.mkdir()
    private, public = generate_keypair(tmp_path / "release-key", comment="release team")
    shutil.copy(public, trusted / "release.pub")
    other_private, _ = generate_keypair(tmp_path / "other-key")
    return private, other_private, trusted


def test_key_files_format_and_permissions(tmp_path):
    private, public = generate_keypair(tmp_path / "k", comment="ci signer")
    assert public.name == "k.pub"
    assert oct(private.stat().st_mode & 0o777) == "0o600"
    assert private.read_text().startswith("basilar-ed25519-private ")
    fields = public.read_text().split()
    assert fields[0] == "basilar-ed25519" and fields[2:] == ["ci", "signer"]
    assert len(key_id(read_public_key(public))) == 16
    with pytest.raises(SignatureError, match="already exists"):
        generate_keypair(tmp_path / "k")


def test_no_trusted_keys_means_no_policy(tmp_path):
    bundle = _bundle_dir(tmp_path / "b")
    assert check_bundle_signature(bundle, tmp_path / "absent") is None
    (tmp_path / "empty").mkdir()
    assert check_bundle_signature(bundle, tmp_path / "empty") is None
    assert check_bundle_signature(bundle, None) is None


def test_signed_bundle_is_accepted(tmp_path, keys):
    private, _, trusted = keys
    bundle = _bundle_dir(tmp_path / "b")
    signer = sign_bundle_dir(bundle, private)
    assert check_bundle_signature(bundle, trusted) == signer
    assert json.loads((bundle / "signature.json").read_text())["key_id"] == signer


def test_unsigned_bundle_is_refused(tmp_path, keys):
    bundle = _bundle_dir(tmp_path / "b")
    with pytest.raises(SignatureError, match="not signed .* trusts 1 key"):
        check_bundle_signature(bundle, keys[2])


def test_tampered_manifest_is_refused(tmp_path, keys):
    private, _, trusted = keys
    bundle = _bundle_dir(tmp_path / "b")
    sign_bundle_dir(bundle, private)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["detector"]["threshold"] = 0.01  # fire on anything
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2))
    with pytest.raises(SignatureError, match="changed after it was signed"):
        check_bundle_signature(bundle, trusted)


def test_signature_from_untrusted_key_is_refused(tmp_path, keys):
    _, other_private, trusted = keys
    bundle = _bundle_dir(tmp_path / "b")
    sign_bundle_dir(bundle, other_private)
    with pytest.raises(SignatureError, match="not trusted"):
        check_bundle_signature(bundle, trusted)


def test_signature_copied_from_another_bundle_is_refused(tmp_path, keys):
    private, _, trusted = keys
    good = _bundle_dir(tmp_path / "good")
    sign_bundle_dir(good, private)
    evil = _bundle_dir(tmp_path / "evil", threshold=0.01)
    shutil.copy(good / "signature.json", evil / "signature.json")
    with pytest.raises(SignatureError, match="changed after it was signed"):
        check_bundle_signature(evil, trusted)


def test_a_signature_is_checked_against_its_own_key_without_trusted_keys(tmp_path, keys):
    """The host's check before a deploy: no trusted keys there, only whether the signature still fits."""
    private, _, _ = keys
    good = _bundle_dir(tmp_path / "good")
    assert check_signature_intact(good) is None  # unsigned
    signer = sign_bundle_dir(good, private)
    assert check_signature_intact(good) == signer
    evil = _bundle_dir(tmp_path / "evil", threshold=0.01)
    shutil.copy(good / "signature.json", evil / "signature.json")
    with pytest.raises(SignatureError, match="changed after it was signed"):
        check_signature_intact(evil)
    (evil / "signature.json").write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        check_signature_intact(evil)


def test_a_tampered_bundle_is_refused_before_a_deploy_sends_anything(tmp_path, keys, tiny_bundle):
    """Its signature carried another bundle's manifest: a dry run said "would install" and a deploy uploaded it
    (minutes over a serial line) for the device to refuse it."""
    from click.testing import CliRunner

    from firmware_tools.cli import main
    from tests.bundle_variants import variant

    private = keys[0]
    signed = variant(tiny_bundle, tmp_path / "signed", 1)
    sign_bundle_dir(signed, private)
    tampered = variant(tiny_bundle, tmp_path / "tampered", 2)
    shutil.copy(signed / "signature.json", tampered / "signature.json")
    for extra in ([], ["--dry-run"]):  # no device on that port: the bundle is refused before it is looked for
        result = CliRunner().invoke(main, ["deploy", str(tampered), "serial:///dev/ttyNOPE", *extra])
        assert result.exit_code == 1 and "cannot deploy" in result.output, result.output
        assert "changed after it was signed" in result.output and "ttyNOPE" not in result.output
    sent = CliRunner().invoke(main, ["deploy", str(signed), "serial:///dev/ttyNOPE", "--dry-run"])
    assert "cannot deploy" not in sent.output and "ttyNOPE" in sent.output, sent.output

    verified = CliRunner().invoke(main, ["bundle", "verify", str(signed)])  # no trusted keys: does it still fit?
    assert verified.exit_code == 0 and f"signed by key {key_id(read_public_key(keys[0].with_suffix('.pub')))}" \
        in verified.output, verified.output
    refused = CliRunner().invoke(main, ["bundle", "verify", str(tampered)])
    assert refused.exit_code == 1 and "changed after it was signed" in refused.output, refused.output


def test_malformed_signature_and_key_files(tmp_path, keys):
    private, _, trusted = keys
    bundle = _bundle_dir(tmp_path / "b")
    (bundle / "signature.json").write_text("{not json")
    with pytest.raises(SignatureError, match="malformed"):
        check_bundle_signature(bundle, trusted)
    (trusted / "broken.pub").write_text("ssh-ed25519 AAAA\n")
    with pytest.raises(SignatureError, match="broken.pub is not a basilar-ed25519 key file"):
        trusted_public_keys(trusted)
    os.unlink(trusted / "broken.pub")
    (trusted / "short.pub").write_text("basilar-ed25519 AAAA\n")
    with pytest.raises(SignatureError, match="32 bytes"):
        trusted_public_keys(trusted)


def test_keygen_and_sign_commands_on_a_directory_and_an_archive(tmp_path, tiny_bundle):
    from click.testing import CliRunner

    from edge.bundle import bundle_id, extract_archive, load_bundle, pack_bundle
    from firmware_tools.signing_cmd import keygen, sign
    from tests.bundle_variants import tamper_file, variant

    runner = CliRunner()
    made = runner.invoke(keygen, [str(tmp_path / "release-key"), "--comment", "release team"])
    assert made.exit_code == 0, made.output
    trusted = tmp_path / "trusted_keys"
    trusted.mkdir()
    shutil.copy(tmp_path / "release-key.pub", trusted / "release.pub")
    again = runner.invoke(keygen, [str(tmp_path / "release-key")])
    assert again.exit_code == 1 and "already exists" in again.output
    into_a_new_folder = runner.invoke(keygen, [str(tmp_path / "keys" / "release-key")])  # the folder is made
    assert into_a_new_folder.exit_code == 0 and (tmp_path / "keys" / "release-key.pub").is_file()

    directory = variant(tiny_bundle, tmp_path / "bundle", 1)
    before = bundle_id(directory)
    signed = runner.invoke(sign, [str(directory), "--key", str(tmp_path / "release-key")])
    assert signed.exit_code == 0, signed.output
    assert bundle_id(directory) == before  # the signature is not part of the manifest
    assert load_bundle(directory, trusted_keys=trusted).id == before

    archive = tmp_path / "unsigned.tar.gz"
    pack_bundle(variant(tiny_bundle, tmp_path / "other", 2), archive)
    signed = runner.invoke(sign, [str(archive), "--key", str(tmp_path / "release-key")])
    assert signed.exit_code == 0, signed.output
    unpacked = extract_archive(archive, tmp_path / "unpacked")
    assert (unpacked / "signature.json").is_file()
    assert check_bundle_signature(unpacked, trusted) is not None

    broken = variant(tiny_bundle, tmp_path / "broken", 3)
    tamper_file(broken)
    refused = runner.invoke(sign, [str(broken), "--key", str(tmp_path / "release-key")])
    assert refused.exit_code == 1 and "cannot sign" in refused.output and not (broken / "signature.json").exists()


def test_a_named_trusted_keys_folder_must_hold_keys(tmp_path):
    """Naming a folder of trusted keys asks for a signature check: a missing or empty folder is no reason to pass
    an unsigned bundle (only the device's own optional trusted_keys/ may be absent)."""
    bundle = _bundle_dir(tmp_path / "b")
    with pytest.raises(SignatureError, match=f"{tmp_path / 'absent'} does not exist"):
        check_bundle_signature(bundle, tmp_path / "absent", required=True)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not a key")
    with pytest.raises(SignatureError, match="holds no .pub keys"):
        check_bundle_signature(bundle, tmp_path / "empty", required=True)


def test_bundle_verify_with_a_missing_or_empty_trusted_keys_folder_fails(tmp_path, tiny_bundle):
    from click.testing import CliRunner

    from firmware_tools.cli import main

    (tmp_path / "empty").mkdir()
    for folder, why in ((tmp_path / "absent", f"{tmp_path / 'absent'} does not exist"),
                        (tmp_path / "empty", "holds no .pub keys")):
        result = CliRunner().invoke(main, ["bundle", "verify", str(tiny_bundle), "--trusted-keys", str(folder)])
        assert result.exit_code == 1 and why in result.output and "Traceback" not in result.output, result.output


def test_trusted_keys_are_read_one_file_at_a_time(tmp_path, keys):
    from edge.signing import read_trusted_keys

    _, _, trusted = keys
    (trusted / "bad.pub").write_text("garbage\n")
    found, problems = read_trusted_keys(trusted)
    assert len(found) == 1
    assert len(problems) == 1 and "bad.pub is not a basilar-ed25519 key file" in problems[0]
    assert read_trusted_keys(tmp_path / "absent") == ({}, [])


def test_signing_where_the_signature_cannot_be_written_is_a_clear_error(tmp_path, keys, tiny_bundle):
    """A read-only bundle folder or a full disk: `cannot sign`, exit 1, not a traceback."""
    from click.testing import CliRunner

    from firmware_tools.cli import main

    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    (bundle / ".signature.json.tmp").mkdir()  # where the signature is written first: it cannot be
    result = CliRunner().invoke(main, ["bundle", "sign", str(bundle), "--key", str(keys[0])])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert f"cannot sign {bundle}: cannot write" in result.output and "copy the bundle somewhere writable" in \
        result.output


def test_a_key_with_a_non_ascii_comment_signs_bundles_a_device_trusts(tmp_path, tiny_bundle):
    """keygen wrote the .pub as UTF-8 and the reader took only ASCII: keygen crashed reading it back, and a device
    trusting the key refused every bundle. keygen -> sign -> verify --trusted-keys, through the CLI."""
    from click.testing import CliRunner

    from firmware_tools.cli import main

    runner = CliRunner()
    made = runner.invoke(main, ["bundle", "keygen", str(tmp_path / "k" / "jk"), "--comment", "Jürgen's release key"])
    assert made.exit_code == 0 and made.exception is None, made.output
    public = tmp_path / "k" / "jk.pub"
    assert public.read_text(encoding="utf-8").rstrip().endswith(" Jürgen's release key")
    trusted = tmp_path / "trusted_keys"
    trusted.mkdir()
    shutil.copy(public, trusted / "jk.pub")
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_bundle, bundle)
    signed = runner.invoke(main, ["bundle", "sign", str(bundle), "--key", str(tmp_path / "k" / "jk")])
    assert signed.exit_code == 0, signed.output
    verified = runner.invoke(main, ["bundle", "verify", str(bundle), "--trusted-keys", str(trusted)])
    assert verified.exit_code == 0 and verified.output.startswith("ok: "), verified.output


@pytest.mark.parametrize("comment, message", [("two\nlines", "the comment must be one line"),
                                              ("bad \udcff byte", "is not valid text (UTF-8)")])
def test_keygen_refuses_a_comment_no_key_file_can_hold_before_writing_anything(tmp_path, comment, message):
    from click.testing import CliRunner

    from firmware_tools.signing_cmd import keygen

    result = CliRunner().invoke(keygen, [str(tmp_path / "k"), "--comment", comment])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit), result.exception
    assert message in result.output and list(tmp_path.iterdir()) == []


# keygen with the files it may write limited to 100 bytes: the private key (69 bytes) fits, its .pub does not
KEYGEN_ON_A_FULL_DISK = """
import resource, sys
resource.setrlimit(resource.RLIMIT_FSIZE, (100, 100))  # Python ignores SIGXFSZ: the write fails (EFBIG)
sys.argv[0] = "basilar"
from firmware_tools.cli import main
main()
"""


def test_keygen_keeps_no_private_key_when_its_public_half_cannot_be_written(tmp_path):
    """The private key stayed when the .pub failed (a full disk): the user held a key no device could trust, and
    the next try was refused ("already exists")."""
    import subprocess
    import sys

    from click.testing import CliRunner

    from firmware_tools.signing_cmd import keygen
    from tests.conftest import REPO

    full = subprocess.run([sys.executable, "-c", KEYGEN_ON_A_FULL_DISK, "bundle", "keygen", str(tmp_path / "k"),
                           "--comment", "x" * 100], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert full.returncode == 1 and "Traceback" not in full.stderr, full.stderr
    said = " ".join(full.stderr.split())
    assert f"cannot write {tmp_path / 'k.pub'} (File too large); no key file was kept: free some space" in said, said
    assert list(tmp_path.iterdir()) == []  # neither the key nor the part of the .pub written
    runner = CliRunner()
    assert runner.invoke(keygen, [str(tmp_path / "k")]).exit_code == 0  # so the next try makes the pair
    assert read_public_key(tmp_path / "k.pub") and (tmp_path / "k").stat().st_mode & 0o777 == 0o600

    long_name = tmp_path / "new" / ("k" * 252)  # a name a folder takes, whose .pub (256 characters) none does
    too_long = runner.invoke(keygen, [str(long_name)])
    assert too_long.exit_code == 1 and isinstance(too_long.exception, SystemExit), too_long.exception
    assert "choose a shorter name" in too_long.output
    assert not (tmp_path / "new").exists()  # nor the folder keygen made for it
    (tmp_path / "l.pub").symlink_to(tmp_path / "gone" / "l.pub")  # followed, it failed after the private key
    linked = runner.invoke(keygen, [str(tmp_path / "l")])
    assert linked.exit_code == 1 and f"{tmp_path / 'l.pub'} already exists" in linked.output
    (tmp_path / "m.pub").mkdir()  # a folder in the way is refused before anything is written
    in_the_way = runner.invoke(keygen, [str(tmp_path / "m")])
    assert in_the_way.exit_code == 1 and "already exists" in in_the_way.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k", "k.pub", "l.pub", "m.pub"]


def test_pack_refuses_a_bundle_changed_after_it_was_signed(tmp_path, keys, tiny_bundle):
    """pack packed it without a word, for every device that trusts the key to refuse the archive."""
    from click.testing import CliRunner

    from firmware_tools.cli import main
    from tests.bundle_variants import variant

    bundle = variant(tiny_bundle, tmp_path / "bundle", 1)
    sign_bundle_dir(bundle, keys[0])
    packed = CliRunner().invoke(main, ["bundle", "pack", str(bundle), str(tmp_path / "signed.tar.gz")])
    assert packed.exit_code == 0, packed.output
    manifest = bundle / "manifest.json"
    manifest.write_bytes(manifest.read_bytes() + b" ")  # still a bundle that loads, with another id
    archive = tmp_path / "changed.tar.gz"
    refused = CliRunner().invoke(main, ["bundle", "pack", str(bundle), str(archive)])
    assert refused.exit_code == 1 and isinstance(refused.exception, SystemExit), refused.output
    assert f"cannot pack {bundle}: the signature does not match manifest.json" in refused.output
    assert "remove its signature.json to pack it unsigned" in refused.output and not archive.exists()
