"""PyInstaller entry point for microgateway-cni."""

from frozen import prepare

prepare()

from cni.main import main  # noqa: E402

main()
