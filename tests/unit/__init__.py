"""Tests that need no server: the domain, the catalog, the spec, packaging, the CLI."""
