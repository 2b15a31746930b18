"""PyInstaller entry point for microgateway-network-validator."""

from frozen import prepare

prepare()

from validator.main import main  # noqa: E402

main()
