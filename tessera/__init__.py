"""Tessera glue: configuration, the embedded servers and the `tessera` command line."""
