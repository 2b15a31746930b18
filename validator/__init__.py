"""microgateway-network-validator: proves the redirection before the application starts."""
