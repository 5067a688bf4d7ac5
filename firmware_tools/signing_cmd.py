"""`basilar bundle sign` and `basilar bundle keygen`: Ed25519 signatures for bundles (key format: edge/signing.py)."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import click


def _sign_archive(archive: Path, key: Path) -> tuple[str, str]:
    """Unpack, sign and re-pack an archive in place (atomically); return (bundle id, key id)."""
    from edge.bundle import bundle_id, extract_archive, pack_bundle
    from edge.signing import sign_bundle_dir

    with tempfile.TemporaryDirectory(prefix=".sign-", dir=archive.parent) as work:
        unpacked = Path(work) / "bundle"
        extract_archive(archive, unpacked)
        signer = sign_bundle_dir(unpacked, key)
        repacked = Path(work) / "signed.tar.gz"
        pack_bundle(unpacked, repacked)
        os.replace(repacked, archive)
        return bundle_id(unpacked), signer


@click.command("sign")
@click.argument("bundle", type=click.Path(exists=True, path_type=Path))
@click.option("--key", "key", required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path),
              help="Private key file made by `basilar bundle keygen`.")
def sign(bundle, key):
    """Sign BUNDLE (a directory or a .tar.gz archive) with an Ed25519 private key.

    Writes signature.json beside manifest.json (an archive is re-packed). The signature covers manifest.json,
    which holds every file's SHA-256, so it covers the whole bundle; the bundle id does not change.
    """
    from edge.bundle import BundleError, load_bundle
    from edge.signing import SignatureError, sign_bundle_dir

    try:
        load_bundle(bundle)  # never sign something a device would refuse anyway
        if bundle.is_dir():
            from edge.bundle import bundle_id
            signer = sign_bundle_dir(bundle, key)
            identity = bundle_id(bundle)
        else:
            identity, signer = _sign_archive(bundle, key)
    except (BundleError, SignatureError) as exc:
        raise click.ClickException(f"cannot sign {bundle}: {exc}") from None
    except OSError as exc:  # a read-only bundle or folder, a full disk
        raise click.ClickException(f"cannot sign {bundle}: cannot write {exc.filename or 'its signature'} "
                                   f"({exc.strerror or exc}); copy the bundle somewhere writable and sign it there") from None
    click.echo(f"signed bundle {identity} with key {signer}: {bundle}")


@click.command("keygen")
@click.argument("private_key", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--comment", default="", help="Free text stored in the public key file (who, what for).")
def keygen(private_key, comment):
    """Make an Ed25519 key pair: PRIVATE_KEY (mode 0600) and PRIVATE_KEY.pub.

    Keep the private key off the devices. Copy the .pub file into <root>/trusted_keys/ on each device: from then
    on the device installs only bundles signed with this key (or another trusted one).
    """
    from edge.signing import SignatureError, generate_keypair, key_id, read_public_key

    new_folders = [folder for folder in (private_key.parent, *private_key.parent.parents)
                   if not os.path.exists(folder)]
    try:
        private_key.parent.mkdir(parents=True, exist_ok=True)  # `keys/release.key` in a fresh checkout
        private_path, public_path = generate_keypair(private_key, comment)  # both files or neither
        try:
            identity = key_id(read_public_key(public_path))  # read back as a device reads it: one it refuses fails
        except SignatureError:
            private_path.unlink(missing_ok=True)
            public_path.unlink(missing_ok=True)
            raise
    except (SignatureError, OSError) as exc:
        for folder in new_folders:  # deepest first; all or nothing, folders too
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise click.ClickException(f"cannot make a key pair: {exc}") from None
    click.echo(f"private key: {private_path} (keep it secret)\npublic key:  {public_path} "
               f"(id {identity}; copy it to <root>/trusted_keys/ on devices)")
