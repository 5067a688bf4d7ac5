"""Bundle signatures: Ed25519 over the bytes of manifest.json (PyNaCl, the `signing` extra).

The manifest lists every file of the bundle with its SHA-256, and loading a bundle checks those hashes, so a
signature over manifest.json covers the whole bundle. The signature lives in `signature.json` beside the manifest
(not listed in it, so signing does not change the bundle id).

Key files are one line of text, like OpenSSH's:

    private key (mode 0600):  basilar-ed25519-private <base64 of the 32-byte seed>
    public key  (*.pub):      basilar-ed25519 <base64 of the 32-byte public key> [comment]

A device trusts the public keys in `<root>/trusted_keys/*.pub`. When that folder holds none, bundles need no
signature; when it holds any, a bundle must be signed by one of them.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from pathlib import Path

PUBLIC_TAG = "basilar-ed25519"
PRIVATE_TAG = "basilar-ed25519-private"
SIGNATURE_FILE = "signature.json"
SIGNED_FILE = "manifest.json"
SIGNATURE_FORMAT = 1


class SignatureError(Exception):
    """A bundle's signature is missing, broken or not from a trusted key; or a key file is unreadable."""


def _nacl_signing():
    try:
        import nacl.exceptions
        import nacl.signing
    except ImportError:
        raise SignatureError("bundle signatures need PyNaCl; install it with: pip install 'basilar[signing]'") \
            from None
    return nacl.signing, nacl.exceptions


def key_id(public_key: bytes) -> str:
    """A short, stable name for a public key: the first 16 hex digits of its SHA-256."""
    return hashlib.sha256(public_key).hexdigest()[:16]


def _decode_key_line(path: Path, tag: str) -> tuple[bytes, str]:
    try:
        text = path.read_text(encoding="utf-8").strip()  # the comment is free text, written as UTF-8
    except (OSError, UnicodeDecodeError) as exc:
        raise SignatureError(f"cannot read the key file {path}: {exc}") from None
    fields = text.split(None, 2)
    if len(fields) < 2 or fields[0] != tag:
        raise SignatureError(f"{path} is not a {tag} key file (expected '{tag} <base64>'); "
                             "make keys with: basilar bundle keygen")
    try:
        raw = base64.b64decode(fields[1], validate=True)
    except binascii.Error:
        raise SignatureError(f"{path}: the key is not valid base64") from None
    if len(raw) != 32:
        raise SignatureError(f"{path}: an Ed25519 key has 32 bytes, this one has {len(raw)}")
    return raw, fields[2] if len(fields) > 2 else ""


def read_public_key(path: str | Path) -> bytes:
    return _decode_key_line(Path(path), PUBLIC_TAG)[0]


def read_private_key(path: str | Path) -> bytes:
    """The 32-byte seed of a private key file."""
    return _decode_key_line(Path(path), PRIVATE_TAG)[0]


def _check_comment(comment: str) -> None:
    """Refused before any file is written: a key file is one line of UTF-8 text."""
    if "\n" in comment or "\r" in comment:
        raise SignatureError("the comment must be one line (a key file is one line of text); leave out the line "
                             "breaks")
    try:
        comment.encode("utf-8")
    except UnicodeEncodeError:  # bytes a non-UTF-8 terminal passed through as they came
        raise SignatureError(f"the comment {comment!r} is not valid text (UTF-8); type it again in a UTF-8 "
                             "terminal, or leave out the characters it cannot show") from None


def generate_keypair(private_path: str | Path, comment: str = "") -> tuple[Path, Path]:
    """Write a new private key (mode 0600) and `<private_path>.pub`; refuse to overwrite either."""
    signing, _ = _nacl_signing()
    _check_comment(comment)
    private_path = Path(private_path)
    public_path = private_path.with_name(private_path.name + ".pub")
    for path in (private_path, public_path):
        if os.path.lexists(path):  # a link to nowhere too: the key would be written wherever it points
            raise SignatureError(f"{path} already exists; choose another name or remove it first")
    key = signing.SigningKey.generate()
    seed = base64.b64encode(bytes(key)).decode()
    public = base64.b64encode(bytes(key.verify_key)).decode()
    written = []
    try:  # both or neither: a private key without its .pub would be refused as "already exists" on the next try
        for path, text, mode in ((private_path, f"{PRIVATE_TAG} {seed}\n", 0o600),
                                 (public_path, f"{PUBLIC_TAG} {public} {comment}".rstrip() + "\n", 0o666)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)  # never through a link left there
            written.append(path)
            with os.fdopen(fd, "w", encoding="utf-8") as f:  # UTF-8: as it is read
                f.write(text)
    except OSError as exc:  # a full disk, a name too long for the .pub, a link put there meanwhile
        failed = exc.filename or path
        for made in written:
            made.unlink(missing_ok=True)
        raise SignatureError(f"cannot write {failed} ({exc.strerror or exc}); no key file was kept: free some "
                             "space, or choose a shorter name or a folder you may write to, and run keygen again") \
            from None
    return private_path, public_path


def sign_bundle_dir(bundle_dir: str | Path, private_key_path: str | Path) -> str:
    """Write `signature.json` into a bundle directory; return the signing key's id."""
    signing, _ = _nacl_signing()
    bundle_dir = Path(bundle_dir)
    manifest = bundle_dir / SIGNED_FILE
    if not manifest.is_file():
        raise SignatureError(f"{bundle_dir} has no {SIGNED_FILE}; is it a bundle directory?")
    key = signing.SigningKey(read_private_key(private_key_path))
    public = bytes(key.verify_key)
    signature = key.sign(manifest.read_bytes()).signature
    document = {
        "format": SIGNATURE_FORMAT,
        "algorithm": "ed25519",
        "signed_file": SIGNED_FILE,
        "key_id": key_id(public),
        "public_key": base64.b64encode(public).decode(),
        "signature": base64.b64encode(signature).decode(),
    }
    tmp = bundle_dir / f".{SIGNATURE_FILE}.tmp"
    tmp.write_text(json.dumps(document, indent=2) + "\n")
    os.replace(tmp, bundle_dir / SIGNATURE_FILE)
    return document["key_id"]


KEY_ERROR_PREFIX = "error: "  # marks a broken key file among the key ids `status` reports


def _exists(path: Path) -> bool:
    """Whether it is there; a path this user may not even look at counts as there (and then fails to be read)."""
    try:
        return path.exists()
    except PermissionError:
        return True


def read_trusted_keys(trusted_keys_dir: str | Path | None) -> tuple[dict[str, bytes], list[str]]:
    """The readable public keys in a folder, by key id, and why each other `*.pub` file is unusable (for a status
    report, which shows both; a check goes through trusted_public_keys, which refuses on any broken file)."""
    keys, problems = {}, []
    folder = Path(trusted_keys_dir) if trusted_keys_dir is not None else None
    if folder is None or not _exists(folder):
        return keys, problems
    # A folder that is there but cannot be read is a problem, never "no keys": glob would quietly find nothing,
    # and the device would take unsigned bundles (say, a root-only folder and a service user).
    try:
        names = sorted(os.listdir(folder))
    except OSError as exc:
        problems.append(f"cannot read the trusted keys folder {folder} ({exc.strerror or exc}); every bundle is "
                        "refused until it is a folder this user may read")
        return keys, problems
    for path in (folder / name for name in names if name.endswith(".pub")):
        try:
            raw = read_public_key(path)
        except SignatureError as exc:
            problems.append(str(exc))
            continue
        keys[key_id(raw)] = raw
    return keys, problems


def split_key_entries(entries) -> tuple[list[str], list[str]]:
    """A device's reported `trusted_keys` as (key ids, problems with key files)."""
    ids = [e for e in entries if not e.startswith(KEY_ERROR_PREFIX)]
    return ids, [e[len(KEY_ERROR_PREFIX):] for e in entries if e.startswith(KEY_ERROR_PREFIX)]


def trusted_public_keys(trusted_keys_dir: str | Path | None, *, required: bool = False) -> dict[str, bytes]:
    """The public keys a device trusts, by key id; empty when the folder is absent or holds no `*.pub`.

    required: the caller named the folder to have signatures checked, so a missing or empty folder is an error
    (passing an unsigned bundle there would look like a successful check).
    """
    folder = Path(trusted_keys_dir) if trusted_keys_dir is not None else None
    if folder is None or not _exists(folder):
        if required:
            what = (f"the trusted keys folder {folder} does not exist" if folder is not None
                    else "no folder of trusted keys was given")
            raise SignatureError(f"{what}, so no signature can be checked; pass the folder that holds the "
                                 "trusted public keys (*.pub, made by: basilar bundle keygen)")
        return {}
    keys, problems = read_trusted_keys(folder)
    if problems:
        raise SignatureError(problems[0])  # a broken key file is an error, never a silently open door
    if not keys and required:
        raise SignatureError(f"{folder} holds no .pub keys, so no signature can be checked; copy the trusted "
                             "public keys (*.pub, made by: basilar bundle keygen) there")
    return keys


def read_signature(signature_path: Path) -> tuple[bytes, bytes]:
    """(public key, signature) from a bundle's signature.json; SignatureError when it is malformed."""
    try:
        document = json.loads(signature_path.read_text(encoding="utf-8"))
        if document.get("algorithm") != "ed25519" or document.get("signed_file") != SIGNED_FILE:
            raise ValueError("unsupported algorithm or signed file")
        return (base64.b64decode(document["public_key"], validate=True),
                base64.b64decode(document["signature"], validate=True))
    except (OSError, ValueError, KeyError, TypeError, AttributeError, binascii.Error) as exc:
        raise SignatureError(f"{signature_path} is malformed ({exc}); sign the bundle again") from None


def check_bundle_signature(bundle_dir: str | Path, trusted_keys_dir: str | Path | None, *,
                           required: bool = False) -> str | None:
    """Enforce the device's signature policy on a bundle directory.

    Returns the id of the trusted key that signed the bundle, or None when the device trusts no keys (then any
    bundle is accepted; with `required`, a missing or empty folder is refused instead). Raises SignatureError
    saying why a bundle is refused.
    """
    trusted = trusted_public_keys(trusted_keys_dir, required=required)
    if not trusted:
        return None
    bundle_dir = Path(bundle_dir)
    signature_path = bundle_dir / SIGNATURE_FILE
    where = f"the device trusts {len(trusted)} key(s) in {trusted_keys_dir}"
    if not signature_path.is_file():
        raise SignatureError(f"the bundle is not signed and {where}; sign it with: "
                             "basilar bundle sign BUNDLE --key PRIVATE_KEY")
    public, signature = read_signature(signature_path)
    signer = key_id(public)
    if trusted.get(signer) != public:
        raise SignatureError(f"the bundle is signed by key {signer}, which is not trusted: {where} "
                             f"({', '.join(sorted(trusted))}); sign it with a trusted key or add its .pub file there")
    _verify_manifest(bundle_dir, public, signature)
    return signer


def check_signature_intact(bundle_dir: str | Path) -> str | None:
    """The id of the key that signed a bundle, when its signature matches its manifest by the public key the
    signature carries; None when the bundle is not signed. Whether that key is trusted is each device's question;
    this catches a bundle changed after signing on the host, before it is sent anywhere. SignatureError: malformed,
    or changed after signing."""
    signature_path = Path(bundle_dir) / SIGNATURE_FILE
    if not signature_path.is_file():
        return None
    public, signature = read_signature(signature_path)
    _verify_manifest(Path(bundle_dir), public, signature)
    return key_id(public)


def _verify_manifest(bundle_dir: Path, public: bytes, signature: bytes) -> None:
    """SignatureError unless `signature` by `public` is over the bundle's manifest.json as it is now."""
    signer = key_id(public)
    signing, exceptions = _nacl_signing()
    manifest = bundle_dir / SIGNED_FILE
    try:
        manifest_bytes = manifest.read_bytes()
    except OSError as exc:
        raise SignatureError(f"cannot read {manifest}: {exc.strerror or exc}") from None
    try:
        signing.VerifyKey(public).verify(manifest_bytes, signature)
    except (exceptions.BadSignatureError, ValueError):
        raise SignatureError(f"the signature does not match {SIGNED_FILE}: the bundle was changed after it was "
                             f"signed by key {signer} (tampered); rebuild and sign it again") from None
