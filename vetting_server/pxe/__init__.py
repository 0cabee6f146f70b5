"""PXE: the dnsmasq supervisor and the boot files it serves."""
