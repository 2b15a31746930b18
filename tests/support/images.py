"""The node tier's images, built here (no registry), cached under build/images/ by a hash of their inputs.

Every archive is an OCI image-layout tar that `ctr -n k8s.io images import` takes with its name.
Builds print progress on stderr; concurrent callers wait on a lock instead of building twice.

The project image's builds share the checkout's buildah storage (build/buildah; other checkouts have their
own) and may run at once, e.g. two versions: each holds a shared lock on that storage while it builds, and
whatever touches images or containers it did not make itself (making the base, removing the images of
earlier inputs, removing the working containers of killed builds) holds it exclusively.
"""

from __future__ import annotations

import configparser
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from tests.support import oci

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "images"
PAUSE = "localhost/mgw-pause:test"
STANDINS = "localhost/mgw-standins:test"
BUSYBOX = Path("/bin/busybox")
# PID 1 of a container ignores signals it has no handler for, so a bare `sleep` would outlive SIGTERM
# until the runtime's kill timeout: the shell's trap makes the sandbox stop at once. Should the sleep
# die, the shell exits too: the runtime sees a dead sandbox rather than a spinning one.
PAUSE_SCRIPT = "trap 'exit 0' TERM INT; sleep infinity & wait"
SUITE = "bookworm"
# Documentation is dropped from the Debian trees, the copyright notices stay.
DPKG_OPTIONS = ["path-exclude=/usr/share/man/*", "path-exclude=/usr/share/locale/*", "path-exclude=/usr/share/info/*",
                "path-exclude=/usr/share/doc/*", "path-include=/usr/share/doc/*/copyright"]
# The stand-ins and the client need the full standard library (json, concurrent.futures), not only
# python3-minimal's; busybox gives the pods nc and a shell; iptables is istio-init's (it writes Istio's
# rules in the Istio-mode pods). No apt: nothing is installed in a pod.
STANDINS_PACKAGES = ["python3-minimal", "libpython3.11-stdlib", "busybox-static", "iptables"]
PROGRAMS_DIR = "/opt/mgw"
PYTHON = "/usr/bin/python3"
# Exactly what the programs import from the project (tests/node/test_images.py runs them in the image).
PROGRAMS = {
    "standins.py": ROOT / "tests" / "support" / "programs" / "standins.py",
    "client.py": ROOT / "tests" / "support" / "programs" / "client.py",
    "validator/__init__.py": ROOT / "validator" / "__init__.py",
    "validator/probe.py": ROOT / "validator" / "probe.py",
    "cni/__init__.py": ROOT / "cni" / "__init__.py",
    "cni/contract.py": ROOT / "cni" / "contract.py",
    "cni/records.py": ROOT / "cni" / "records.py",
}
ROLES = ("app", "engine", "istio")
PROJECT = "localhost/microgateway-cni"
# The Dockerfile's base: made here from Debian's packages (like debian:12-slim: minbase, no documentation).
BASE = "localhost/debian:12-slim"
BUILD_INPUTS = ["Dockerfile", "pyproject.toml", "README.md", "cni", "validator", "daemonset", "scripts"]
BUILDAH = ROOT / "build" / "buildah"
# The host's package-index settings reach the RUN steps as read-only mounts. The host's CA bundle is
# mounted beside the builder's own (ca-certificates replaces that file when it installs), and the pip.conf
# mounted at /etc/pip.conf names it.
HOST_CA = Path("/etc/ssl/certs/ca-certificates.crt")
BUILD_CA = "/run/mgw-host/ca-certificates.crt"
HOST_PIP_DIRS = [Path("/etc/xdg/pip"), Path("/opt/wheels"), Path("/opt/pypi")]
HOST_PIP_CONF = Path("/etc/pip.conf")
BUILD_FLAGS = ["--isolation", "chroot", "--pull=never", "--layers", "--force-rm"]
STANDIN_OPTIONS = ("name", "ports", "port", "families", "forward", "host4", "host6")


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
            tmp.chmod(0o644)
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


def host_apt_sources() -> list[Path]:
    """The host's enabled apt source files, so that the Debian trees come from the mirror the host uses."""
    apt = Path("/etc/apt")
    candidates = [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list")),
                  *sorted((apt / "sources.list.d").glob("*.sources"))]
    return [path for path in candidates if path.is_file() and path.read_text().strip()]


def debian_tree(dest: Path, variant: str, packages: list[str]) -> None:
    """A merged-/usr Debian tree made by mmdebstrap; its own and its hooks' chatter is shown only if it fails."""
    command = ["mmdebstrap", f"--variant={variant}", "--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr",
               *(f"--dpkgopt={option}" for option in DPKG_OPTIONS)]
    if packages:
        command.append("--include=" + ",".join(packages))
    done = subprocess.run([*command, SUITE, str(dest), *map(str, host_apt_sources())], stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"mmdebstrap failed ({done.returncode}); it said:\n{done.stdout[-4000:]}")


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A directory under build/ (same file system as the cache), removed afterwards."""
    tmp_root = ROOT / "build" / "tmp"
    tmp_root.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_root))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def standins_archive() -> Path:
    """Debian's python3 with the stand-in and client programs under /opt/mgw."""
    config = oci.ImageConfig(env=[oci.PATH, "PYTHONDONTWRITEBYTECODE=1", "PYTHONUNBUFFERED=1"],
                             working_dir=PROGRAMS_DIR, cmd=[PYTHON, f"{PROGRAMS_DIR}/standins.py", "--help"])
    files: dict[str, oci.File | oci.Symlink] = {
        f"{PROGRAMS_DIR}/{name}": oci.File(source, 0o644) for name, source in PROGRAMS.items()}
    files["usr/local/bin/nc"] = oci.Symlink("/usr/bin/busybox")
    recipe = repr((SUITE, STANDINS_PACKAGES, DPKG_OPTIONS, config, sorted(files)))

    def build(dest: Path) -> None:
        with scratch_dir("standins-") as tmp:
            progress(f"mmdebstrap {SUITE} with {', '.join(STANDINS_PACKAGES)}")
            debian_tree(tmp / "rootfs", "essential", STANDINS_PACKAGES)
            progress("writing the archive")
            oci.write_image(dest, STANDINS, config, trees=[tmp / "rootfs"], files=files)

    return cached("mgw-standins", input_hash(recipe, [*PROGRAMS.values(), Path(oci.__file__)]), build)


def _option(value: str | int | Iterable[int]) -> str:
    if isinstance(value, str | int):
        return str(value)
    return ",".join(str(item) for item in value)


def standin_command(role: str, **opts: str | int | Iterable[int]) -> list[str]:
    """The argv of a stand-in inside the image: options as tests/support/programs/standins.py takes them.

    Lists of ports or families may be given as iterables of ints.
    """
    if role not in ROLES:
        raise ValueError(f"unknown stand-in role {role!r}; expected one of {ROLES}")
    argv = [PYTHON, f"{PROGRAMS_DIR}/standins.py", role]
    for key, value in opts.items():
        if key not in STANDIN_OPTIONS:
            raise TypeError(f"standins.py has no option --{key}")
        argv += [f"--{key}", _option(value)]
    return argv


def client_command(*targets: str) -> list[str]:
    """The argv of tests/support/programs/client.py inside the stand-ins image ("host:port" targets)."""
    return [PYTHON, f"{PROGRAMS_DIR}/client.py", *targets]


def project_image(version: str = "0.1.0") -> str:
    return f"{PROJECT}:{version}"


def _buildah_command(*args: str) -> list[str]:
    """buildah on the checkout's own storage (build/buildah, vfs): `rm -rf build` resets it.

    Its containers.conf points the network configuration (which buildah sets up even for a build that
    needs no network) under build/ too: by default it creates /etc/cni/net.d on the host.
    """
    conf = BUILDAH / "containers.conf"
    if not conf.exists():  # written whole under another name: a concurrent build never reads half of it
        BUILDAH.mkdir(parents=True, exist_ok=True)
        partial = BUILDAH / f".containers.conf.{os.getpid()}"
        partial.write_text(f'[network]\nnetwork_config_dir = "{BUILDAH / "net.d"}"\n')
        partial.replace(conf)
    return ["env", f"CONTAINERS_CONF={conf}", "buildah", "--root", str(BUILDAH / "root"), "--runroot",
            str(BUILDAH / "runroot"), "--storage-driver", "vfs", *args]


def buildah(*args: str) -> str:
    command = _buildah_command(*args)
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-4000:]}")
    return done.stdout


def _done(kind: str, key: str) -> bool:
    return (BUILDAH / f"{kind}-{key}").exists()


def _once(kind: str, key: str, work: Callable[[], None]) -> None:
    """Run work once per key of its kind in buildah's storage; a marker under build/buildah says which key.
    Only under the storage's exclusive lock (_storage)."""
    marker = BUILDAH / f"{kind}-{key}"
    if marker.exists():
        return
    work()
    for stale in BUILDAH.glob(f"{kind}-*"):
        stale.unlink()
    marker.touch()


BASE_CONFIG = oci.ImageConfig(cmd=["bash"])


def _base_key() -> str:
    return input_hash(repr((SUITE, "minbase", DPKG_OPTIONS, BASE_CONFIG)), [Path(oci.__file__)])


def _debian_base() -> None:
    """BASE in buildah's storage, made once per recipe."""
    _once("base", _base_key(), lambda: _make_debian_base(BASE_CONFIG))


def _make_debian_base(config: oci.ImageConfig) -> None:
    with scratch_dir("base-") as tmp:
        progress(f"making {BASE} with mmdebstrap (minbase {SUITE})")
        debian_tree(tmp / "rootfs", "minbase", [])
        oci.write_image(tmp / "base.tar", BASE, config, trees=[tmp / "rootfs"])
        image_id = buildah("pull", "--quiet", f"oci-archive:{tmp / 'base.tar'}").strip()
        buildah("tag", image_id, BASE)


def _pip_conf(dest: Path) -> None:
    """The host's /etc/pip.conf with its CA bundle at the path the build mounts it."""
    conf = configparser.ConfigParser()
    if HOST_PIP_CONF.is_file():
        conf.read(HOST_PIP_CONF)
    if not conf.has_section("global"):
        conf.add_section("global")
    conf["global"]["cert"] = BUILD_CA
    with dest.open("w") as out:
        conf.write(out)


def _context(dest: Path) -> None:
    """The build inputs alone (no virtualenvs, build output or bytecode): the context is what is hashed."""
    dest.mkdir()
    for name in BUILD_INPUTS:
        source = ROOT / name
        if source.is_dir():
            shutil.copytree(source, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(source, dest / name)


def _build(version: str, context: Path, pip_conf: Path, lock: int) -> None:
    """buildah build; the storage lock's descriptor goes to buildah too, so that a build that outlives this
    process (killed) still holds its shared lock, and no exclusive holder removes its working container."""
    mounts = [f"{pip_conf}:/etc/pip.conf:ro", f"{HOST_CA}:{BUILD_CA}:ro"]
    mounts += [f"{path}:{path}:ro" for path in HOST_PIP_DIRS if path.exists()]
    command = _buildah_command(
        "build", *BUILD_FLAGS, "-f", str(context / "Dockerfile"),
        "-t", project_image(version), "--build-arg", f"VERSION={version}",
        "--label", f"org.opencontainers.image.version={version}", *(f"--volume={mount}" for mount in mounts),
        str(context))
    log = CACHE / f"microgateway-cni-{version}.log"
    with log.open("w", buffering=1) as out, subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                                text=True, pass_fds=(lock,)) as build:
        assert build.stdout is not None
        for line in build.stdout:
            out.write(line)
            if step := re.match(r"(?:\[(\d+/\d+)\] )?STEP (\d+/\d+): (.*)", line):
                stage = f"stage {step[1]} " if step[1] else ""
                progress(f"building {project_image(version)} {stage}step {step[2]}: {step[3][:100]}")
    if build.returncode != 0:
        raise RuntimeError(f"buildah build failed ({build.returncode}), log in {log}:\n"
                           f"{log.read_text()[-4000:]}")


def _remove_leftover_containers() -> None:
    """Remove the working containers left in buildah's storage: under the exclusive lock no build runs, so
    each is a killed build's (buildah build removes its own when it ends, --force-rm also after a failure)."""
    left = buildah("containers", "--all", "--quiet").split()
    if left:
        progress(f"removing {len(left)} working container(s) of killed builds from build/buildah")
        buildah("rm", *left)


@contextlib.contextmanager
def _storage(inputs_key: str) -> Iterator[int]:
    """A shared lock on build/buildah for one build (yields its descriptor), after the work that needs the
    exclusive lock: the base image and the removal of earlier inputs' images (when not yet done), and the
    removal of killed builds' working containers (when no other build runs, else left to a later build)."""
    BUILDAH.mkdir(parents=True, exist_ok=True)
    with (BUILDAH / ".storage.lock").open("w") as lock:
        waiting = False
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Another process holds it: shared by a build, which has done the work for its inputs, or
                # exclusively while it does that work. Ours may start once the work for our inputs is done.
                if _done("base", _base_key()) and _done("inputs", inputs_key):
                    fcntl.flock(lock, fcntl.LOCK_SH)
                    break
                if not waiting:
                    progress("waiting for the other builds in build/buildah (earlier inputs) to finish")
                    waiting = True
                time.sleep(0.5)
                continue
            _remove_leftover_containers()
            _debian_base()
            _once("inputs", inputs_key, _forget_project_images)
            # From exclusive to shared is not atomic: an exclusive holder in between finds the work done.
            fcntl.flock(lock, fcntl.LOCK_SH)
            break
        yield lock.fileno()


def _forget_project_images() -> None:
    """Remove every project image and the layers only they use; run once per set of inputs (_once).

    vfs keeps a full tree per layer, so each change of the inputs would leave about a gigabyte behind.
    Images of the current inputs stay: another version is built from their layer cache, its builder stage too.
    """
    stale = buildah("images", "--format", "{{.Name}}:{{.Tag}}", "--filter", f"reference={PROJECT}").split()
    progress(f"removing {len(stale)} project image(s) of earlier inputs and their layers from build/buildah")
    if stale:
        buildah("rmi", *stale)
    buildah("rmi", "--prune")


def _project_inputs() -> list[Path]:
    return [*(ROOT / name for name in BUILD_INPUTS), Path(oci.__file__)]


def _storage_key() -> str:
    """The project's inputs, whatever the version: buildah's storage keeps the images of one such key."""
    return input_hash(repr((SUITE, DPKG_OPTIONS, BUILD_FLAGS)), _project_inputs())


def project_archive(version: str = "0.1.0") -> Path:
    """The project's image built from the Dockerfile with buildah, exported as an OCI archive.

    Another version (e.g. 0.1.1 for an upgrade) is built from the same Dockerfile with another VERSION:
    buildah's layer cache gives it every layer of the first build, so it has the same binaries and
    differs only in its version label and name. That cache does not key the LABEL step on the build
    argument (buildah 1.28), so the version label is also given on the command line.
    """
    inputs = _project_inputs()
    key = input_hash(repr((version, SUITE, DPKG_OPTIONS, BUILD_FLAGS, "version label")), inputs)

    def build(dest: Path) -> None:
        with _storage(_storage_key()) as lock, \
                scratch_dir("context-") as tmp:
            _context(tmp / "context")
            _pip_conf(tmp / "pip.conf")
            _build(version, tmp / "context", tmp / "pip.conf", lock)
            buildah("push", "--quiet", project_image(version), f"oci-archive:{dest}:{project_image(version)}")
        oci.set_name(dest, project_image(version))  # buildah writes only the OCI ref name

    return cached(f"microgateway-cni-{version}", key, build)
