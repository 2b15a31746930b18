"""microgateway-cni-installer: installs, chains and repairs microgateway-cni on every node."""
