"""CLI command groups (see effnets.cli)."""
