"""`basilar bundle inspect|verify|pack|sign`."""
import json
from pathlib import Path

import click

from firmware_tools.cli_errors import fail_on
from firmware_tools.lazy_group import LazyGroup


@click.group(cls=LazyGroup, lazy_commands={"sign": "firmware_tools.signing_cmd:sign",
                                           "keygen": "firmware_tools.signing_cmd:keygen"})
def bundle():
    """Inspect, verify, pack and sign bundles. BUNDLE is a directory or a .tar.gz archive; inspect and verify also
    take 'default', the shipped bundle."""


@bundle.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--json", "as_json", is_flag=True, help="Print the whole manifest as JSON.")
def inspect(bundle_path, as_json):
    """Show what a bundle holds."""
    from edge.bundle import load_bundle

    with fail_on():
        b = load_bundle(bundle_path, check_model=False)
    m = b.manifest
    if as_json:
        click.echo(json.dumps({"id": b.id, **m}, indent=2))
        return
    fe = b.frontend_config  # parsed: a field the manifest leaves out has its default
    spec = m["models"]["step"].get("spec") or {}
    click.echo(f"bundle     {b.id}\nname       {m.get('name')}  (basilar {m.get('basilar_version')}, "
               f"schema {m['schema_version']})")
    click.echo(f"labels     {', '.join(b.labels)}")
    click.echo(f"front end  {fe.sample_rate} Hz, {fe.channels} channels, {fe.f_low:g}-{fe.f_high:g} Hz, "
               f"hop {fe.hop_ms:g} ms; hash {m['frontend']['hash'][:16]}...")
    averaged = f", {spec['branches']} models averaged" if spec.get("branches", 1) > 1 else ""
    click.echo(f"model      {m['models']['step']['file']}: width {spec.get('width')}, dilations "
               f"{spec.get('dilations')}, receptive field {m['models']['step'].get('receptive_field_frames')} frames"
               f"{averaged}")
    for name, sha in m["files"].items():
        click.echo(f"file       {name}  {(b.path / name).stat().st_size} bytes  sha256 {sha[:16]}...")
    click.echo(f"detector   {json.dumps(m.get('detector', {}))}")
    prov = m.get("provenance", {})
    if prov:
        click.echo(f"data       {prov.get('training_data') or 'not recorded'}\n"
                   f"license    {prov.get('license') or 'not recorded'}")


@bundle.command()
@click.argument("bundle_path", metavar="BUNDLE")
@click.option("--trusted-keys", type=click.Path(file_okay=False, path_type=Path),
              help="Folder of trusted public keys (*.pub): the bundle must be signed by one of them.")
def verify(bundle_path, trusted_keys):
    """Check hashes, schema, front-end match, and run one inference. Exit 0 only when the bundle is usable."""
    from edge.bundle import load_bundle

    with fail_on():
        b = load_bundle(bundle_path, trusted_keys=trusted_keys)
        from edge.runner import StepRunner

        runtime = StepRunner(b).runtime
    signed = "" if trusted_keys else _signature_fits(b.path)
    for key in unknown_detector_settings(b.manifest):
        click.echo(f"warning: the detector setting {key!r} is not one this basilar knows (a newer basilar's, or a "
                   "typo); it is ignored", err=True)
    click.echo(f"ok: bundle {b.id[:16]}... ({len(b.labels)} labels) verified; one inference ran on {runtime}"
               f"{signed}")


NOT_CHECKED = object()  # no signing extra here: a signature cannot be checked


def _intact_signer(bundle_dir: Path):
    """edge.signing.check_signature_intact's answer (the signer, None when unsigned; SignatureError when the
    signature no longer fits), or NOT_CHECKED without the signing extra (a device may lack it)."""
    from edge.signing import check_signature_intact

    try:
        import nacl  # noqa: F401 - the signing extra
    except ImportError:
        return NOT_CHECKED
    return check_signature_intact(bundle_dir)


def _signature_fits(bundle_dir: Path) -> str:
    """Without --trusted-keys: whether a signature the bundle carries still fits its manifest (a bundle changed
    after signing, or given another's signature, is refused), for the verdict's line; "" when unsigned."""
    from edge.signing import SignatureError

    try:
        signer = _intact_signer(bundle_dir)
    except SignatureError as exc:
        raise click.ClickException(str(exc)) from None
    if signer is NOT_CHECKED:
        return "; its signature was not checked (pip install 'basilar[signing]')"
    return f"; signed by key {signer} (whether a device trusts it: --trusted-keys DIR)" if signer else ""


def unknown_detector_settings(manifest: dict) -> list[str]:
    """Keys of the manifest's detector settings that the detector does not read (it ignores them, so that a newer
    bundle still loads: a hand-edited "threshhold" would pass unseen)."""
    from edge.detector import DetectorSettings

    return sorted(set(manifest.get("detector") or {}) - DetectorSettings.manifest_keys())


@bundle.command()
@click.argument("bundle_dir", type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.argument("archive", type=click.Path(dir_okay=False, path_type=Path))
def pack(bundle_dir, archive):
    """Write a bundle directory as a single .tar.gz archive (deterministic). It may replace an earlier bundle
    archive, never another file."""
    from edge.bundle import load_bundle, pack_bundle
    from firmware_tools.bundler import check_archive_destination

    with fail_on():
        check_archive_destination(archive)  # as `basilar convert --out X.tar.gz` does: a backup is not overwritten
        load_bundle(bundle_dir)
        _refuse_a_broken_signature(bundle_dir)
        bundle_id = pack_bundle(bundle_dir, archive)
    click.echo(f"{archive}: bundle {bundle_id}")


def _refuse_a_broken_signature(bundle_dir: Path) -> None:
    """A signature.json that no longer fits the manifest (the bundle changed after signing) would travel in the
    archive to be refused by every device that trusts the key: said before anything is written."""
    from edge.bundle import SIGNATURE
    from edge.signing import SignatureError

    if not (bundle_dir / SIGNATURE).is_file():
        return
    try:
        signer = _intact_signer(bundle_dir)
    except SignatureError as exc:
        raise click.ClickException(f"cannot pack {bundle_dir}: {exc}; or remove its {SIGNATURE} to pack it "
                                   "unsigned") from None
    if signer is NOT_CHECKED:
        click.echo(f"warning: the signature of {bundle_dir} was not checked (pip install 'basilar[signing]')",
                   err=True)
