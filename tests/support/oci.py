"""OCI image-layout archives written and read without a registry or an image tool.

`ctr images import` takes such a tar; the manifest's name annotations make the imported image keep its
name. Layers are uncompressed tars; file-map layers have fixed mtimes and owners, so the same inputs
give the same bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import shutil
import stat
import tarfile
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar"
INDEX = "application/vnd.oci.image.index.v1+json"
NAME_ANNOTATION = "io.containerd.image.name"
REF_ANNOTATION = "org.opencontainers.image.ref.name"
EPOCH = "1970-01-01T00:00:00Z"
PATH = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"


@dataclass(frozen=True)
class Symlink:
    """A symbolic link in a file map."""

    target: str


@dataclass(frozen=True)
class File:
    """A regular file in a file map: its bytes (or a host file to copy) and mode."""

    source: bytes | Path
    mode: int = 0o755


FileMap = Mapping[str, File | Symlink]


@dataclass(frozen=True)
class ImageConfig:
    """The runtime part of an image config (the fields a container runtime reads)."""

    entrypoint: list[str] = field(default_factory=list)
    cmd: list[str] = field(default_factory=list)
    env: list[str] = field(default_factory=lambda: [PATH])
    user: str = ""
    working_dir: str = ""
    labels: dict[str, str] = field(default_factory=dict)

    def as_json(self) -> dict[str, object]:
        config: dict[str, object] = {"Env": self.env}
        for key, value in (("Entrypoint", self.entrypoint), ("Cmd", self.cmd), ("User", self.user),
                           ("WorkingDir", self.working_dir), ("Labels", self.labels)):
            if value:
                config[key] = value
        return config


def architecture() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def _normalised(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    info.uname = info.gname = ""
    return info


def _parents(path: str) -> Iterator[str]:
    parts = path.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        yield "/".join(parts[:i])


def layer_from_files(files: FileMap, out: io.BufferedIOBase) -> None:
    """A layer with exactly these entries (owned by root), their parent directories created 0755."""
    names = {path.strip("/"): entry for path, entry in files.items()}
    dirs = sorted({parent for name in names for parent in _parents(name)} - set(names))
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in dirs:
            info = tarfile.TarInfo(name)
            info.type, info.mode = tarfile.DIRTYPE, 0o755
            tar.addfile(_normalised(info))
        for name in sorted(names):
            entry = names[name]
            info = tarfile.TarInfo(name)
            if isinstance(entry, Symlink):
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
                tar.addfile(_normalised(info))
                continue
            data = entry.source if isinstance(entry.source, bytes) else entry.source.read_bytes()
            info.size, info.mode = len(data), entry.mode
            tar.addfile(_normalised(info), io.BytesIO(data))


def layer_from_tree(root: Path, out: io.BufferedIOBase) -> None:
    """A layer of everything under root in sorted order, keeping modes, numeric owners and mtimes.

    The mtimes stay because Python's bytecode caches are checked against them. Device nodes, sockets
    and fifos are left out: a container's /dev comes from the runtime.
    """
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in sorted(dirnames + filenames):
                path = Path(dirpath) / name
                mode = path.lstat().st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
                    continue
                info = tar.gettarinfo(str(path), arcname=str(path.relative_to(root)))
                info.uname = info.gname = ""
                if info.isreg():
                    with path.open("rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)


@dataclass
class _Blob:
    digest: str
    size: int
    path: Path


def _blob_from_file(path: Path) -> _Blob:
    digest = hashlib.sha256()
    with path.open("rb") as data:
        while chunk := data.read(1 << 20):
            digest.update(chunk)
    return _Blob("sha256:" + digest.hexdigest(), path.stat().st_size, path)


def _add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    tar.addfile(_normalised(info), io.BytesIO(data))


def _json(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def write_archive(dest: Path, name: str, layers: list[Path], config: ImageConfig) -> None:
    """Write an OCI image-layout tar of these layer tars (bottom first) named `name` (host/repo:tag)."""
    blobs = [_blob_from_file(layer) for layer in layers]
    image_config = _json({
        "architecture": architecture(), "os": "linux", "created": EPOCH, "config": config.as_json(),
        "rootfs": {"type": "layers", "diff_ids": [blob.digest for blob in blobs]},
        "history": [{"created": EPOCH, "created_by": "tests/support/oci.py"} for _ in blobs],
    })
    config_digest = "sha256:" + hashlib.sha256(image_config).hexdigest()
    manifest = _json({
        "schemaVersion": 2, "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": config_digest, "size": len(image_config)},
        "layers": [{"mediaType": LAYER, "digest": blob.digest, "size": blob.size} for blob in blobs],
    })
    manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
    index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [
        {"mediaType": MANIFEST, "digest": manifest_digest, "size": len(manifest),
         "platform": {"architecture": architecture(), "os": "linux"}, "annotations": name_annotations(name)}]}
    with tarfile.open(dest, "w", format=tarfile.PAX_FORMAT) as tar:
        _add_bytes(tar, "oci-layout", _json({"imageLayoutVersion": "1.0.0"}))
        _add_bytes(tar, "index.json", _json(index))
        for digest, content in ((config_digest, image_config), (manifest_digest, manifest)):
            _add_bytes(tar, "blobs/sha256/" + digest.removeprefix("sha256:"), content)
        written = set()
        for blob in blobs:
            if blob.digest in written:
                continue
            written.add(blob.digest)
            info = tarfile.TarInfo("blobs/sha256/" + blob.digest.removeprefix("sha256:"))
            info.size, info.mode = blob.size, 0o644
            with blob.path.open("rb") as data:
                tar.addfile(_normalised(info), data)


def name_annotations(name: str) -> dict[str, str]:
    """containerd reads the full name; the OCI ref name is the tag, as containerd's own export writes it."""
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    return {NAME_ANNOTATION: name, REF_ANNOTATION: tag}


def write_image(dest: Path, name: str, config: ImageConfig, *, files: FileMap | None = None,
                trees: list[Path] | None = None) -> None:
    """An image of one layer per tree (bottom first), then one layer of the file map."""
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        layers = []
        for i, tree in enumerate(trees or []):
            layers.append(Path(tmp) / f"tree{i}.tar")
            with layers[-1].open("wb") as out:
                layer_from_tree(tree, out)
        if files:
            layers.append(Path(tmp) / "files.tar")
            with layers[-1].open("wb") as out:
                layer_from_files(files, out)
        write_archive(dest, name, layers, config)


def _member(tar: tarfile.TarFile, name: str) -> bytes:
    extracted = tar.extractfile(name)
    if extracted is None:
        raise ValueError(f"{name} is not a file in the archive")
    return extracted.read()


def _blob(tar: tarfile.TarFile, digest: str) -> bytes:
    return _member(tar, "blobs/sha256/" + digest.removeprefix("sha256:"))


def read_index(archive: Path) -> dict[str, Any]:
    with tarfile.open(archive) as tar:
        return dict(json.loads(_member(tar, "index.json")))


def read_image(archive: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """The only manifest of the archive and its image config."""
    with tarfile.open(archive) as tar:
        manifests = json.loads(_member(tar, "index.json"))["manifests"]
        if len(manifests) != 1:
            raise ValueError(f"{archive}: expected one manifest, found {len(manifests)}")
        manifest = json.loads(_blob(tar, manifests[0]["digest"]))
        return manifest, json.loads(_blob(tar, manifest["config"]["digest"]))


def set_name(archive: Path, name: str) -> None:
    """Rewrite index.json so that the archive's only manifest carries `name` in both annotations."""
    with tempfile.NamedTemporaryFile(dir=archive.parent, delete=False) as out:
        tmp = Path(out.name)
    try:
        with tarfile.open(archive) as src, tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as dst:
            for member in src:
                if member.name == "index.json":
                    index = json.loads(_member(src, "index.json"))
                    for manifest in index["manifests"]:
                        manifest["annotations"] = {**manifest.get("annotations", {}), **name_annotations(name)}
                    _add_bytes(dst, "index.json", _json(index))
                else:
                    dst.addfile(member, src.extractfile(member) if member.isreg() else None)
        tmp.replace(archive)
    finally:
        tmp.unlink(missing_ok=True)


def unpack(archive: Path, rootfs: Path) -> None:
    """Apply the image's layers in order onto rootfs (whiteouts honoured; owners kept only as root)."""
    manifest, _config = read_image(archive)
    with tarfile.open(archive) as tar:
        for layer in manifest["layers"]:
            blob = tar.extractfile("blobs/sha256/" + layer["digest"].removeprefix("sha256:"))
            if blob is None:
                raise ValueError(f"{archive}: layer {layer['digest']} missing")
            with tarfile.open(fileobj=blob, mode="r|*") as layer_tar:
                for member in layer_tar:
                    _apply(layer_tar, member, rootfs)


def _apply(layer: tarfile.TarFile, member: tarfile.TarInfo, rootfs: Path) -> None:
    path = rootfs / member.name
    if not path.parent.resolve().is_relative_to(rootfs.resolve()):
        raise ValueError(f"layer entry {member.name} leads out of the root through a link")
    base = path.name
    if base == OPAQUE:
        for child in path.parent.iterdir():
            _remove(child)
        return
    if base.startswith(WHITEOUT):
        _remove(path.parent / base.removeprefix(WHITEOUT))
        return
    if path.is_symlink() or (path.exists() and not (path.is_dir() and member.isdir())):
        _remove(path)
    layer.extract(member, rootfs, set_attrs=True, filter="tar")


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
