"""microgateway-cni: chained CNI plugin steering a protected pod's inbound TCP through the Engine."""
