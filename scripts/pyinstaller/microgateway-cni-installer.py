"""PyInstaller entry point for microgateway-cni-installer."""

from frozen import prepare

prepare()

from daemonset.cli import main  # noqa: E402

main()
