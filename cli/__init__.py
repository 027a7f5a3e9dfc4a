"""The `ddn` command-line interface (a click group)."""
