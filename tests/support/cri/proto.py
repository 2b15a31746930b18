"""The runtime.v1 message and stub modules, generated from runtime_v1.proto on first use.

Generated code is not committed: it is built into <checkout>/build/cri/, keyed by the proto and the
generator's version, so an edit to the proto or a new grpcio-tools rebuilds it and concurrent test runs
share one build.
"""

from __future__ import annotations

import hashlib
import importlib.util
import shutil
import subprocess
import sys
import tempfile
from functools import cache
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

PROTO = Path(__file__).with_name("runtime_v1.proto")
BUILD = Path(__file__).resolve().parents[3] / "build" / "cri"


def _generated_dir() -> Path:
    key = hashlib.sha256(PROTO.read_bytes() + version("grpcio-tools").encode()).hexdigest()[:16]
    target = BUILD / key
    if (target / "runtime_v1_pb2_grpc.py").exists():
        return target
    BUILD.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=BUILD))
    try:
        done = subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{PROTO.parent}",
                               f"--python_out={work}", f"--grpc_python_out={work}", PROTO.name],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"grpc_tools.protoc failed on {PROTO} ({done.returncode}):\n{done.stderr}")
        try:
            work.rename(target)
        except OSError:
            if not (target / "runtime_v1_pb2_grpc.py").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _load(name: str, directory: Path) -> ModuleType:
    # The generated stub module imports the message module by its bare name.
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, directory / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@cache
def modules() -> tuple[ModuleType, ModuleType]:
    """(messages, stubs): runtime_v1_pb2 and runtime_v1_pb2_grpc."""
    directory = _generated_dir()
    return _load("runtime_v1_pb2", directory), _load("runtime_v1_pb2_grpc", directory)
