"""The node tier's images, built here (no registry), cached under build/images/ by a hash of their inputs.

Every archive is an OCI image-layout tar that `ctr -n k8s.io images import` takes with its name.
Builds print progress on stderr; concurrent callers wait on a lock instead of building twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

from tests.support import oci

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "images"
PAUSE = "localhost/mgw-pause:test"
BUSYBOX = Path("/bin/busybox")
# PID 1 of a container ignores signals it has no handler for, so a bare `sleep` would outlive SIGTERM
# until the runtime's kill timeout: the shell's trap makes the sandbox stop at once.
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; while :; do sleep infinity & wait $!; done"


def progress(message: str) -> None:
    print(f"images: {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _locked(name: str) -> Iterator[None]:
    CACHE.mkdir(parents=True, exist_ok=True)
    with (CACHE / f".{name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def input_hash(recipe: str, files: list[Path]) -> str:
    """A short hash of the recipe text and every file under the given paths (names and contents)."""
    digest = hashlib.sha256(recipe.encode())
    for path in files:
        for file in sorted(path.rglob("*")) if path.is_dir() else [path]:
            if file.is_file() and "__pycache__" not in file.parts:
                digest.update(str(file.relative_to(ROOT) if file.is_relative_to(ROOT) else file).encode())
                digest.update(hashlib.sha256(file.read_bytes()).digest())
    return digest.hexdigest()[:16]


def cached(name: str, key: str, build: Callable[[Path], None]) -> Path:
    """The archive build/images/<name>-<key>.tar, made by build(tmp path) unless it exists."""
    archive = CACHE / f"{name}-{key}.tar"
    with _locked(name):
        if archive.exists():
            return archive
        progress(f"building {name} ({archive.name})")
        tmp = archive.with_suffix(".partial")
        try:
            build(tmp)
            tmp.replace(archive)
        finally:
            tmp.unlink(missing_ok=True)
        for stale in CACHE.glob(f"{name}-*.tar"):
            if stale != archive:
                stale.unlink()
        progress(f"built {archive.name} ({archive.stat().st_size // 1024} KiB)")
        return archive


def _busybox_files(*applets: str) -> dict[str, oci.File | oci.Symlink]:
    files: dict[str, oci.File | oci.Symlink] = {"bin/busybox": oci.File(BUSYBOX)}
    files.update({f"bin/{applet}": oci.Symlink("busybox") for applet in applets})
    return files


def pause_archive() -> Path:
    """The sandbox image: busybox's shell sleeping until SIGTERM/SIGINT."""
    config = oci.ImageConfig(entrypoint=["/bin/sh", "-c", PAUSE_SCRIPT], user="65535:65535")

    def build(dest: Path) -> None:
        oci.write_image(dest, PAUSE, config, files=_busybox_files("sh", "sleep"))

    return cached("mgw-pause", input_hash(repr(config), [BUSYBOX, Path(oci.__file__)]), build)
