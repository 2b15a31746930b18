"""The Dockerfile: lint-clean, its builder runs the same build script the e2e tests use, and the image
it builds (buildah, tests/support/images.py) holds the three bundles, their links and nothing else.

The built image's binaries run from its unpacked layers in a chroot with private mount, PID and
network namespaces, with the image's environment only: nothing of the host's file system is used.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import images, oci

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()
BUNDLES = ("microgateway-cni", "microgateway-network-validator", "microgateway-cni-installer")
LINKS = {
    "usr/local/bin/microgateway-cni-installer": "/usr/local/lib/microgateway-cni-installer/microgateway-cni-installer",
    "usr/local/bin/microgateway-network-validator":
        "/usr/local/lib/microgateway-network-validator/microgateway-network-validator",
    "usr/share/doc/microgateway-cni": "/usr/local/lib/microgateway-cni/licenses",
}
DIRECTORIES = {"usr", "usr/local", "usr/local/bin", "usr/local/lib", "usr/share", "usr/share/doc"}
VERSION = "0.1.0"
NEWER = "0.1.1"
# Mount /proc as a runtime would (the launcher finds its bundle through it), then run as the image's user.
IN_ROOTFS = 'mkdir -p "$0/proc" && mount -t proc proc "$0/proc" && exec chroot --userspec="$1" "$0" "${@:2}"'


def test_hadolint_passes():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_stages_build_with_the_tested_script_and_ship_only_binaries():
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "builder"
    assert stages[1][0] == "scratch", "the final stage needs nothing from a base image"
    assert "bash scripts/build-binaries.sh" in DOCKERFILE
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert not re.search(r"^RUN\b", final, re.MULTILINE), "the final stage has no shell to run anything"
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/microgateway-cni-installer"\]', final, re.MULTILINE)
    assert re.search(r"^USER 65532:65532$", final, re.MULTILINE)
    for label in ("title", "version", "source", "licenses", "description"):
        assert f"org.opencontainers.image.{label}=" in final
    copied = re.findall(r"^COPY --from=builder (\S+) (\S+)$", final, re.MULTILINE)
    assert sorted(copied) == sorted([*((f"/src/dist/bin/{name}/", f"/usr/local/lib/{name}/") for name in BUNDLES),
                                     ("/links/", "/")])


def test_builder_has_the_launcher_toolchain_and_the_image_carries_the_notices():
    builder, final = DOCKERFILE.rsplit("\nFROM ", 1)
    assert "musl-tools" in builder, "build-binaries.sh compiles the static launcher with musl-gcc"
    # whole bundles are copied, so each keeps its licenses/ directory (glibc, libgcc_s, musl, ...)
    assert re.findall(r"COPY --from=builder /src/dist/bin/(\S+)/ /usr/local/lib/\1/", final)
    links = re.findall(r"ln -s (\S+)\s+(?:\\\n\s*)?/links(\S+)", builder)
    assert sorted(links) == sorted([
        ("/usr/local/lib/microgateway-cni/licenses", "/usr/share/doc/microgateway-cni"),
        *((f"/usr/local/lib/{name}/{name}", f"/usr/local/bin/{name}") for name in BUNDLES[1:]),
    ])


@pytest.fixture(scope="module")
def image() -> Iterator[tuple[Path, dict, Path]]:
    """The built archive, its image config and its layers applied to an empty directory."""
    archive = images.project_archive(VERSION)
    _manifest, config = oci.read_image(archive)
    with tempfile.TemporaryDirectory(prefix="mgw-image-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        rootfs.mkdir()
        oci.unpack(archive, rootfs)
        yield archive, config, rootfs


def image_env(config: dict) -> dict[str, str]:
    return dict(item.split("=", 1) for item in config["config"].get("Env", []))


def run_in_image(rootfs: Path, config: dict, argv: list[str], env: dict[str, str] | None = None):
    return subprocess.run(["unshare", "--mount", "--pid", "--net", "--fork", "--propagation", "private",
                           "/bin/bash", "-c", IN_ROOTFS, str(rootfs), config["config"]["User"], *argv],
                          env={**image_env(config), **(env or {})}, capture_output=True, text=True, timeout=60)


def in_bundle(entry: str) -> bool:
    parts = entry.split("/")
    return parts[:3] == ["usr", "local", "lib"] and len(parts) > 3 and parts[3] in BUNDLES


def test_built_image_is_named_and_configured_as_the_dockerfile_says(image):
    archive, config, _rootfs = image
    annotations = oci.read_index(archive)["manifests"][0]["annotations"]
    assert annotations[oci.NAME_ANNOTATION] == images.project_image(VERSION), "ctr import would lose the name"
    runtime = config["config"]
    assert runtime["Entrypoint"] == ["/usr/local/bin/microgateway-cni-installer"] and runtime["Cmd"] == ["run"]
    assert runtime["User"] == "65532:65532"
    assert "MGW_PLUGIN_BINARY=/usr/local/lib/microgateway-cni/microgateway-cni" in runtime["Env"]
    labels = runtime["Labels"]
    assert labels["org.opencontainers.image.version"] == VERSION
    assert labels["org.opencontainers.image.title"] == "microgateway-cni"
    assert {"org.opencontainers.image.licenses", "org.opencontainers.image.source",
            "org.opencontainers.image.description"} <= set(labels)


def test_built_image_holds_the_three_bundles_their_links_and_nothing_else(image):
    _archive, _config, rootfs = image
    entries = {str(path.relative_to(rootfs)) for path in rootfs.rglob("*")}
    assert {entry for entry in entries if not in_bundle(entry)} == DIRECTORIES | set(LINKS)
    for link, target in LINKS.items():
        assert os.readlink(rootfs / link) == target
        assert (rootfs / target.lstrip("/")).exists(), f"{link} -> {target} dangles"
    for name in BUNDLES:
        bundle = rootfs / "usr/local/lib" / name
        assert {path.name for path in bundle.iterdir()} >= {name, "_internal", "licenses"}, name
        assert (bundle / "licenses" / "debian-packages.txt").is_file()


def test_each_binary_of_the_image_runs_from_its_layers_alone(image):
    _archive, config, rootfs = image
    for name in ("microgateway-cni-installer", "microgateway-network-validator"):
        done = run_in_image(rootfs, config, [f"/usr/local/bin/{name}", "--help"])
        assert done.returncode == 0 and "Usage:" in done.stdout, f"{name}: {done.stdout}{done.stderr}"
    # The plugin takes no options: the runtime talks to it through CNI_COMMAND and stdin.
    done = run_in_image(rootfs, config, [image_env(config)["MGW_PLUGIN_BINARY"]], env={"CNI_COMMAND": "VERSION"})
    assert done.returncode == 0 and "1.0.0" in json.loads(done.stdout)["supportedVersions"], done.stdout + done.stderr


def test_a_newer_version_shares_every_layer_and_carries_its_own_version(image):
    """The upgrade tests' newer image: same binaries from the layer cache, another name and label."""
    _archive, config, _rootfs = image
    newer = images.project_archive(NEWER)
    _manifest, newer_config = oci.read_image(newer)
    assert newer_config["rootfs"] == config["rootfs"]
    assert newer_config["config"]["Labels"]["org.opencontainers.image.version"] == NEWER
    assert oci.read_index(newer)["manifests"][0]["annotations"][oci.NAME_ANNOTATION] == images.project_image(NEWER)
