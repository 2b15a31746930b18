"""The iptables-legacy backend: python-iptables writes and reads, libiptc removes, /proc names the tables."""
