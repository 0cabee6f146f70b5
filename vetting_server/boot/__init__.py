"""Making a host boot: the built-in boot providers, BMCs, power windows and netboot."""
