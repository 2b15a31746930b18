"""Where the tests find the programs scripts/setup.sh provides that Debian does not package (helm)."""

from __future__ import annotations

import os


def binary(name: str) -> str:
    """$MGW_COMPONENTS_BIN/<name>; without the variable the tests cannot know where setup put it."""
    directory = os.environ.get("MGW_COMPONENTS_BIN")
    if not directory:
        raise RuntimeError(f"{name}: MGW_COMPONENTS_BIN is not set; run `bash scripts/setup.sh`, which provides "
                           f"{name} and tells where")
    return os.path.join(directory, name)
