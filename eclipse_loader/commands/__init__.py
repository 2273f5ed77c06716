"""Sub-commands of the `eclipse-loader` CLI (one module each, see `eclipse_loader.cli`)."""
