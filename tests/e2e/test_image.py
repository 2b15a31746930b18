"""The Dockerfile: lint-clean, and its builder runs the same build script the e2e tests use.

No Docker engine runs on the test machines, so the stages are checked by hadolint and the build
script is exercised directly (tests/e2e/test_binaries.py).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def test_hadolint_passes():
    hadolint = os.path.join(os.path.dirname(sys.executable), "hadolint")
    done = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr


def test_stages_build_with_the_tested_script_and_ship_only_binaries():
    stages = re.findall(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", DOCKERFILE, re.MULTILINE)
    assert len(stages) == 2 and stages[0][1] == "builder"
    assert "bash scripts/build-binaries.sh" in DOCKERFILE
    final = DOCKERFILE.rsplit("\nFROM ", 1)[1]
    assert "apt-get" not in final and "pip" not in final, "nothing to compile in the final image"
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/microgateway-cni-installer"\]', final, re.MULTILINE)
    assert re.search(r"^USER 65532", final, re.MULTILINE)
    for label in ("title", "version", "source", "licenses", "description"):
        assert f"org.opencontainers.image.{label}=" in final
    copied = re.findall(r"COPY --from=builder /src/dist/bin/(\S+)/ ", final)
    assert sorted(copied) == ["microgateway-cni", "microgateway-cni-installer", "microgateway-network-validator"]


def test_builder_has_the_launcher_toolchain_and_the_image_carries_the_notices():
    builder, final = DOCKERFILE.rsplit("\nFROM ", 1)
    assert "musl-tools" in builder, "build-binaries.sh compiles the static launcher with musl-gcc"
    # whole bundles are copied, so each keeps its licenses/ directory (glibc, libgcc_s, musl, ...)
    assert re.findall(r"COPY --from=builder /src/dist/bin/(\S+)/ /usr/local/lib/\1/", final)
    assert "ln -s /usr/local/lib/microgateway-cni/licenses /usr/share/doc/microgateway-cni" in final
