"""Sub-commands of the `mert` CLI, one module each, imported only when invoked."""
