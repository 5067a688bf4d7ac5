"""Bundles: everything a device needs to run one model, and the checks that it all belongs together.

A bundle is a directory holding manifest.json, the int8 TFLite models, and ATTRIBUTION.md (plus an optional
signature.json, see edge/signing.py). manifest.json lists every other file with its SHA-256, so the SHA-256 of
manifest.json identifies the whole bundle: that is its id. An archive is a deterministic .tar.gz of the same
files, with no directory prefix.
"""
import atexit
import dataclasses
import errno
import gzip
import hashlib
import io
import json
import os
import shutil
import tarfile
import tempfile
import zlib
from pathlib import Path

from edge.frontend import FrontendConfig, FrontendConfigError

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE = "signature.json"
DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default_bundle"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz")
MAX_ARCHIVE_MEMBERS = 64
MAX_ARCHIVE_BYTES = 64 * 1024 * 1024  # unpacked; the default bundle is well under 1 MB
# What every basilar manifest carries: what tells an earlier bundle (which a new one may replace) from another
# program's manifest.json (a web app's, an extension's), and what a bundle cannot load without.
MANIFEST_KEYS = ("schema_version", "frontend", "models", "files", "labels", "quantization")


class BundleError(Exception):
    """A bundle that cannot be used; the message says what does not match and what to do."""


# What a damaged .tar.gz raises while it is read: a flipped bit (zlib.error: invalid distances set, a bad tar
# header), a cut file (EOFError, ReadError), a broken gzip header (BadGzipFile, an OSError).
_DAMAGED = (tarfile.TarError, EOFError, zlib.error, OSError)
MAX_FILE_NAME = 100  # characters; a bundle's files are a manifest, a model and a few texts


def name_problem(name: str) -> str | None:
    """Why no bundle may hold a file of this name (an archive's entry, a manifest's file); None when one may."""
    if "/" in name or "\\" in name or name in ("", ".", "..") or name.startswith("."):
        return f"{name!r} is not a plain file name; bundle archives are flat"
    if len(name) > MAX_FILE_NAME:  # the start only: a hostile archive's name may be megabytes
        return f"the name {name[:24]!r}... is {len(name)} characters long; a bundle's file names have " \
               f"{MAX_FILE_NAME} at most"
    return None


def archive_names(bundle_dir: Path, files) -> list[str]:
    """What an archive of a bundle directory holds: manifest.json, the files it lists and signature.json, which are
    what the id and the signature cover."""
    return sorted({MANIFEST, *files} | ({SIGNATURE} if (bundle_dir / SIGNATURE).is_file() else set()))


def check_limits(bundle_dir: Path, names: list[str]) -> None:
    """A bundle directory within the limits every archive loader applies (extract_archive): else it would pack, and
    every device would refuse the archive."""
    fix = "rebuild the bundle (`basilar convert`)"
    if len(names) > MAX_ARCHIVE_MEMBERS:
        raise BundleError(f"{bundle_dir / MANIFEST} lists {len(names) - 1 - (SIGNATURE in names)} files, {len(names)} "
                          f"with the manifest itself{' and the signature' if SIGNATURE in names else ''}; a bundle "
                          f"has at most {MAX_ARCHIVE_MEMBERS}, so no archive of it would load: {fix}")
    for name in names:
        problem = name_problem(name)
        if problem:
            raise BundleError(f"{bundle_dir / MANIFEST}: {problem}, so no archive of it would load: {fix}")
    total = sum((bundle_dir / name).stat().st_size for name in names if (bundle_dir / name).is_file())
    if total > MAX_ARCHIVE_BYTES:
        raise BundleError(f"the files of {bundle_dir} come to {total} bytes; a bundle has at most {MAX_ARCHIVE_BYTES}, "
                          f"so no archive of it would load: {fix}")


def _unreadable(archive_path, exc) -> BundleError:
    return BundleError(f"{archive_path} is not a readable .tar.gz bundle archive ({exc}): it is corrupt or not a "
                       "bundle; copy it again, or re-create it with `basilar bundle pack`")


def _corrupt(archive_path, exc) -> BundleError:
    return BundleError(f"{archive_path} is truncated or corrupt ({exc or type(exc).__name__}); copy it again")


@dataclasses.dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    id: str

    @property
    def labels(self) -> list[str]:
        return list(self.manifest["labels"])

    @property
    def frontend_config(self) -> FrontendConfig:
        return FrontendConfig.from_dict(self.manifest["frontend"]["config"])

    @property
    def step_model_path(self) -> Path:
        return self.path / self.manifest["models"]["step"]["file"]

    @property
    def window_model_path(self) -> Path | None:
        window = self.manifest["models"].get("window")
        return self.path / window["file"] if window else None

    @property
    def detector_settings(self) -> dict:
        return dict(self.manifest.get("detector", {}))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest()


def is_archive(path: Path) -> bool:
    return path.is_file() and path.name.endswith(ARCHIVE_SUFFIXES)


def resolve(path) -> Path:
    """'default' -> the shipped bundle; otherwise the path itself, which must exist."""
    if str(path) == "default":
        if not (DEFAULT_BUNDLE / MANIFEST).is_file():
            raise BundleError(f"the default bundle is missing from {DEFAULT_BUNDLE}: reinstall basilar")
        return DEFAULT_BUNDLE
    p = Path(path)
    if not p.exists():
        raise BundleError(f"no bundle at {p}: pass a bundle directory, a .tar.gz bundle archive, or 'default'")
    return p


def archive_manifest(archive_path) -> bytes:
    """The bytes of a bundle archive's manifest.json, read without unpacking the rest."""
    p = Path(archive_path)
    try:
        tar = tarfile.open(p, "r:gz")
    except _DAMAGED as exc:
        raise _unreadable(p, exc) from None
    with tar:
        try:
            info = tar.getmember(MANIFEST)
            if not info.isfile():  # a link's size is 0: read through it, a member of any size would be
                raise BundleError(f"{p}: its {MANIFEST} is not a plain file (a link or a folder); the archive is "
                                  "damaged or not a basilar bundle: re-create it with `basilar bundle pack`")
            if info.size > MAX_ARCHIVE_BYTES:  # it is read whole, into memory; gigabytes of zeros pack into MBs
                raise BundleError(f"{p}: its {MANIFEST} is {info.size} bytes, more than a bundle may hold "
                                  f"({MAX_ARCHIVE_BYTES}; a manifest is a few KB); the archive is damaged or not a "
                                  "basilar bundle: re-create it with `basilar bundle pack`")
            member = tar.extractfile(info)
            if member is None:
                raise KeyError(MANIFEST)
            return member.read()
        except KeyError:
            raise BundleError(f"{p} has no {MANIFEST}: it is not a basilar bundle archive") from None
        except _DAMAGED as exc:
            raise _corrupt(p, exc) from None


def bundle_id(path) -> str:
    """The bundle's id: the hex SHA-256 of its manifest.json (works on directories and archives)."""
    p = resolve(path)
    if is_archive(p):
        return hashlib.sha256(archive_manifest(p)).hexdigest()
    manifest = p / MANIFEST
    if not manifest.is_file():
        raise BundleError(f"{p} has no {MANIFEST}: it is not a basilar bundle directory")
    return file_sha256(manifest)


class _Bounded(io.RawIOBase):
    """A stream that refuses to give more than `limit` bytes: what tarfile reads of an archive, headers included
    (a long-name or pax header declaring gigabytes is read whole into memory before any entry is seen)."""

    def __init__(self, raw, limit: int, archive_path):
        self.raw, self.left, self.archive_path = raw, limit, archive_path

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        data = self.raw.read(min(len(buffer), self.left + 1))
        self.left -= len(data)
        if self.left < 0:
            raise BundleError(f"{self.archive_path} unpacks to more than {MAX_ARCHIVE_BYTES} bytes; refused")
        buffer[:len(data)] = data
        return len(data)


def extract_archive(archive_path, dest_dir) -> Path:
    """Unpack a bundle archive into dest_dir safely: regular files only, flat names, bounded size and count.

    Read as a stream, entry by entry, each checked before its data is written and every limit applied as the
    archive is read, so that a small hostile archive (a million empty entries, a header of gigabytes) costs no
    more than a bundle may; what was written is in dest_dir, which the caller discards on an error."""
    archive_path, dest = Path(archive_path), Path(dest_dir)
    raw = None
    try:
        raw = gzip.open(archive_path, "rb")
        tar = tarfile.open(fileobj=_Bounded(raw, MAX_ARCHIVE_BYTES + (MAX_ARCHIVE_MEMBERS + 4) * 2048, archive_path),
                           mode="r|")  # reads the first entry's headers already
    except (*_DAMAGED, RecursionError) as exc:  # RecursionError: thousands of chained long-name headers
        if raw is not None:
            raw.close()
        raise _unreadable(archive_path, exc) from None
    with raw, tar:
        dest.mkdir(parents=True, exist_ok=True)
        count = total = 0
        while True:
            try:
                m = tar.next()
            except (*_DAMAGED, RecursionError) as exc:  # RecursionError: thousands of chained long-name headers
                raise _corrupt(archive_path, exc) from None
            if m is None:
                break
            count += 1
            if count > MAX_ARCHIVE_MEMBERS:
                raise BundleError(f"{archive_path} holds more than {MAX_ARCHIVE_MEMBERS} entries; a bundle has at "
                                  f"most {MAX_ARCHIVE_MEMBERS}")
            if not m.isfile():
                raise BundleError(f"{archive_path}: entry {m.name!r} is not a regular file (links, devices and "
                                  "folders are refused)")
            problem = name_problem(m.name)
            if problem:
                raise BundleError(f"{archive_path}: entry {problem}")
            total += m.size
            if total > MAX_ARCHIVE_BYTES:
                raise BundleError(f"{archive_path} unpacks to more than {MAX_ARCHIVE_BYTES} bytes; refused")
            if (dest / m.name).exists():
                raise BundleError(f"{archive_path}: entry {m.name!r} appears twice; re-create the archive with "
                                  "`basilar bundle pack`")
            with tar.extractfile(m) as src, open(dest / m.name, "wb") as out:
                while True:
                    try:
                        block = src.read(1 << 16)
                    except _DAMAGED as exc:  # only reading: a full disk while writing is no corrupt archive
                        raise _corrupt(archive_path, exc) from None
                    if not block:
                        break
                    out.write(block)
    return dest


def _cannot_unpack(archive_path, dest, exc: OSError) -> BundleError:
    return BundleError(f"cannot unpack {archive_path} into {dest}: {exc.strerror or exc}; free space there (a "
                       "bundle unpacks to its size), or set TMPDIR to a folder with room")


def pack_bundle(bundle_dir, archive_path) -> str:
    """Write a deterministic .tar.gz of a bundle directory (same files -> same bytes); return the bundle id.

    The archive holds manifest.json, the files it lists and signature.json: exactly what the id and the signature
    cover. Anything else in the folder (a .DS_Store, an editor's backup) is left out, not refused: it is no part of
    the bundle, and a device refuses dotfiles and would never check an unlisted file.
    """
    src, archive_path = Path(bundle_dir), Path(archive_path)
    if not archive_path.name.endswith(ARCHIVE_SUFFIXES):
        raise BundleError(f"{archive_path}: name the archive {archive_path.name}.tar.gz (bundle archives end in "
                          f"{' or '.join(ARCHIVE_SUFFIXES)}; nothing else loads them)")
    if not archive_path.parent.is_dir():  # said before the bundle is read, not as a bare "No such file"
        raise BundleError(f"{archive_path}: there is no folder {archive_path.parent}; nothing was written: create it "
                          f"first (mkdir -p {archive_path.parent}) or write the archive to another folder")
    if archive_path.resolve().parent == src.resolve():  # it would overwrite, or be read as, a file of the bundle
        raise BundleError(f"{archive_path}: write the archive outside the bundle folder {src}")
    if not (src / MANIFEST).is_file():
        raise BundleError(f"{src} has no {MANIFEST}: it is not a bundle directory")
    listed = read_manifest(src).get("files")
    if not isinstance(listed, dict):
        raise BundleError(f"{src / MANIFEST} lacks 'files'; the bundle is damaged or not a basilar bundle")
    names = archive_names(src, listed)
    check_limits(src, names)  # as extract_archive: never an archive that no loader takes
    for name in names:
        if not (src / name).is_file():
            raise BundleError(f"bundle file {name!r} listed in the manifest is missing from {src}; re-create the "
                              "bundle")
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in names:
            data = (src / name).read_bytes()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    _write_atomically(archive_path, buffer.getvalue())
    return bundle_id(src)


def _write_atomically(archive_path: Path, tar_bytes: bytes) -> None:
    """Gzip `tar_bytes` into a temporary file beside the archive and rename it into place once complete: a write
    that fails (a full disk) leaves an earlier archive there as it was, never a truncated one."""
    tmp = archive_path.with_name(f".{archive_path.name}.{os.urandom(4).hex()}.tmp")
    try:
        # O_EXCL: never through a link planted under that name; mode 0o666 less the umask, as open() gives
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), "wb") as raw:
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
                gz.write(tar_bytes)
            raw.flush()
            os.fsync(raw.fileno())  # a full disk is said now, not lost when a delayed write fails after the rename
        os.replace(tmp, archive_path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)  # a full disk, or Ctrl-C: no half-written stray left beside the archive
        if not isinstance(exc, OSError):
            raise
        earlier = f"; {archive_path} is as it was" if archive_path.exists() else ""
        fix = f"free space in {archive_path.parent}" if exc.errno in (errno.ENOSPC, errno.EDQUOT) \
            else f"check that this user may write in {archive_path.parent}"
        raise BundleError(f"cannot write the archive {archive_path}: {exc.strerror or exc}{earlier}; {fix}, or write "
                          "the archive to another folder") from None


def _unpack_to_temp(archive: Path) -> Path:
    """Unpack an archive to be loaded; a device's installer unpacks into its own store instead, and handles a full
    disk there itself (extract_archive raises OSError for what it cannot write)."""
    try:
        tmp = Path(tempfile.mkdtemp(prefix="basilar-bundle-"))
    except OSError as exc:
        raise _cannot_unpack(archive, tempfile.gettempdir(), exc) from None
    atexit.register(shutil.rmtree, tmp, True)
    try:
        return extract_archive(archive, tmp)
    except OSError as exc:  # writing: a full disk (a small device's /tmp is often a few MB of RAM)
        raise _cannot_unpack(archive, tmp, exc) from None


class _NotJson(ValueError):
    pass


def _no_constant(name: str):
    raise _NotJson(f"{name} is not a JSON value")


def read_manifest(bundle_dir: Path) -> dict:
    try:
        text = (bundle_dir / MANIFEST).read_text()
    except FileNotFoundError:
        raise BundleError(f"{bundle_dir} has no {MANIFEST}: it is not a basilar bundle") from None
    except UnicodeDecodeError as exc:
        raise BundleError(f"{bundle_dir / MANIFEST} is not valid JSON ({exc}); the bundle is damaged") from None
    except OSError as exc:  # a folder of that name, a file the service user may not read, a failing card
        raise BundleError(f"cannot read {bundle_dir / MANIFEST}: {exc.strerror or exc}; copy or deploy the bundle "
                          "again") from None
    try:
        # NaN and Infinity are not JSON: `bundle inspect --json` could not write them back out.
        manifest = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, (json.JSONDecodeError, _NotJson)):
            reason = str(exc)
        else:  # Python's own limit on an integer's digits, or on nesting
            reason = "nested too deeply" if isinstance(exc, RecursionError) else "a number of thousands of digits"
        raise BundleError(f"{bundle_dir / MANIFEST} is not valid JSON ({reason}); the bundle is damaged") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{bundle_dir / MANIFEST} must hold a JSON object")
    return manifest


_JSON_NAMES = {dict: "object", list: "array", str: "string", int: "integer"}


_ABSENT = object()  # a key the manifest leaves out, told apart from one it sets to null


def _check_shape(bundle_dir: Path, manifest: dict) -> None:
    """The manifest's sections have the types the rest of basilar reads them as (a hand-edited manifest may not)."""
    def part(section, key):
        return section.get(key, _ABSENT) if isinstance(section, dict) else _ABSENT

    step = part(manifest["models"], "step")
    # Each section before its parts: `"frontend": "x"` is named as it is written, not as a config of null
    shapes = [("files", manifest["files"], dict), ("frontend", manifest["frontend"], dict),
              ("frontend.config", part(manifest["frontend"], "config"), dict), ("models", manifest["models"], dict),
              ("models.step", step, dict), ("models.step.file", part(step, "file"), str),
              ("labels", manifest["labels"], list)]
    spec = part(step, "spec")
    # Optional sections, but of their type when present: inspect and the runner read them so, and print the
    # descriptive strings (a name of 5 or a version of {...} is a hand-edit gone wrong, not a bundle).
    shapes += [(where, value, kind) for where, value, kind in (
        ("models.step.spec", spec, dict), ("models.step.spec.branches", part(spec, "branches"), int),
        ("provenance", manifest.get("provenance"), dict), ("name", manifest.get("name"), str),
        ("basilar_version", manifest.get("basilar_version"), str), ("created", manifest.get("created"), str))
        if value is not None and value is not _ABSENT]
    for where, value, kind in shapes:
        if value is _ABSENT:  # its section, checked before it, is an object that leaves it out
            raise BundleError(f"{bundle_dir / MANIFEST}: {where} is missing; the bundle is damaged: rebuild it")
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise BundleError(f"{bundle_dir / MANIFEST}: {where} must be a JSON {_JSON_NAMES[kind]}, not "
                              f"{json.dumps(value)[:40]}; the bundle is damaged: rebuild it")
    if not all(isinstance(v, str) for v in manifest["files"].values()) or \
            not all(isinstance(label, str) for label in manifest["labels"]):
        raise BundleError(f"{bundle_dir / MANIFEST}: files must map names to SHA-256 strings and labels must be "
                          "strings; the bundle is damaged: rebuild it")
    labels = manifest["labels"]
    twice = sorted({label for label in labels if labels.count(label) > 1})
    if twice or "" in labels:
        raise BundleError(f"{bundle_dir / MANIFEST}: labels must be distinct names, not "
                          f"{', '.join(map(repr, twice or ['']))} {'twice' if twice else ''}; a detection could not "
                          "say which word it heard: rebuild the bundle")


def _left_out(config: dict, exc: Exception) -> str:
    """When a front-end field the manifest leaves out is what is refused, say so: the error names its default, a
    value the manifest never states."""
    named = [f.name for f in dataclasses.fields(FrontendConfig) if f.name not in config and f"{f.name}=" in str(exc)]
    if not named:
        return ""
    return f"frontend.config has no {' and no '.join(named)}, and the default does not fit the rest: "


def check_manifest(bundle_dir: Path, manifest: dict) -> None:
    version = manifest.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:  # noqa: E721 - True == 1, but is no version
        raise BundleError(f"bundle schema version {version!r} is not supported (this basilar reads version "
                          f"{SCHEMA_VERSION}); re-create the bundle with this basilar version or upgrade basilar")
    for key in MANIFEST_KEYS:
        if key not in manifest:
            raise BundleError(f"{bundle_dir / MANIFEST} lacks {key!r}; the bundle is damaged or not a basilar bundle")
    _check_shape(bundle_dir, manifest)
    check_limits(bundle_dir, archive_names(bundle_dir, manifest["files"]))
    for name, expected in manifest["files"].items():
        path = bundle_dir / name
        if not path.is_file():  # names with a folder part were refused by check_limits
            raise BundleError(f"bundle file {name!r} listed in the manifest is missing from {bundle_dir}")
        try:
            actual = file_sha256(path)
        except OSError as exc:  # a failing SD card, or a file the service user may not read
            raise BundleError(f"cannot read bundle file {name!r} in {bundle_dir}: {exc.strerror or exc}; check its "
                              "permissions, or copy or deploy the bundle again") from None
        if actual != expected:
            raise BundleError(f"bundle file {name!r} is corrupt: SHA-256 {actual[:16]}... does not match the "
                              f"manifest's {expected[:16]}...; copy or deploy the bundle again")
    try:
        config = FrontendConfig.from_dict(manifest["frontend"]["config"])
    except (FrontendConfigError, TypeError, KeyError) as exc:
        raise BundleError(f"the bundle's front-end config is invalid: {_left_out(manifest['frontend']['config'], exc)}"
                          f"{exc}") from None
    if config.hash() != manifest["frontend"].get("hash"):
        raise BundleError("the bundle's front-end hash does not match its front-end config under this basilar "
                          f"version (expected {config.hash()[:16]}..., manifest says "
                          f"{str(manifest['frontend'].get('hash'))[:16]}...): the model was trained on other "
                          "features; retrain or convert it with this basilar version")
    for role in ("step",):
        if role not in manifest["models"] or manifest["models"][role]["file"] not in manifest["files"]:
            raise BundleError(f"the manifest names no {role} model listed among its files")
    # Checked here, at install time too: a device must not make current a bundle it cannot start with.
    from edge.detector import Detector, DetectorSettings, DetectorSettingsError

    try:
        Detector(DetectorSettings.from_manifest(manifest.get("detector"), hop_ms=config.hop_ms), manifest["labels"])
    except DetectorSettingsError as exc:
        raise BundleError(f"the bundle's {exc.args[0].removeprefix('the ')}; the bundle is damaged: rebuild it "
                          "(`basilar convert` sets the detector defaults)") from None


def load_bundle(path, *, trusted_keys=None, check_model: bool = True) -> Bundle:
    """Open and check a bundle (directory, .tar.gz archive, or 'default').

    Checks the schema version, every file's SHA-256, the front-end hash, and (check_model) that the step
    model's input matches the front-end config. trusted_keys: a folder of trusted public keys; the bundle must
    carry a valid signature from one of them (a missing or empty folder is an error).
    """
    p = resolve(path)
    bundle_dir = _unpack_to_temp(p) if is_archive(p) else p
    if not bundle_dir.is_dir():
        raise BundleError(f"{p} is neither a bundle directory nor a .tar.gz bundle archive")
    try:
        return _checked(bundle_dir, trusted_keys, check_model)
    except BundleError as exc:
        if bundle_dir == p:
            raise
        # Name the archive the user gave, not the temporary folder it was unpacked into (gone at exit).
        raise BundleError(str(exc).replace(str(bundle_dir), str(p))) from None


def _checked(bundle_dir: Path, trusted_keys, check_model: bool) -> Bundle:
    manifest = read_manifest(bundle_dir)
    check_manifest(bundle_dir, manifest)
    if trusted_keys is not None:
        from edge.signing import SignatureError, check_bundle_signature

        try:
            # Named by the caller, so the folder must hold keys: a missing one must not pass an unsigned bundle.
            check_bundle_signature(bundle_dir, trusted_keys, required=True)
        except SignatureError as exc:
            raise BundleError(str(exc)) from None
    bundle = Bundle(path=bundle_dir, manifest=manifest, id=file_sha256(bundle_dir / MANIFEST))
    if check_model:
        from edge.runner import check_step_model

        check_step_model(bundle)
    return bundle
