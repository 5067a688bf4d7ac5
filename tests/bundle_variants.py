"""Distinct, valid bundles for the release and deploy tests, made from one real bundle.

A bundle's id is the SHA-256 of its manifest.json bytes, so re-writing the manifest with extra trailing whitespace
gives a new id while every check a loader makes (schema, file hashes, model shape) still passes.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path


def variant(base: Path, dest: Path, n: int) -> Path:
    """A copy of bundle `base` (unsigned) whose id differs for every n >= 1."""
    shutil.copytree(base, dest, ignore=shutil.ignore_patterns("signature.json"))
    manifest = dest / "manifest.json"
    manifest.write_bytes(manifest.read_bytes().rstrip() + b"\n" + b" " * n + b"\n")
    return dest


def tamper_manifest(bundle_dir: Path) -> None:
    """Change what the manifest says (as an attacker would), leaving the files alone."""
    manifest = bundle_dir / "manifest.json"
    data = json.loads(manifest.read_text())
    data["tampered"] = True
    manifest.write_text(json.dumps(data, indent=2))


def tamper_file(bundle_dir: Path, name: str | None = None) -> None:
    """Flip one byte of a file listed in the manifest (by default the step model)."""
    if name is None:
        name = json.loads((bundle_dir / "manifest.json").read_text())["models"]["step"]["file"]
    path = bundle_dir / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
