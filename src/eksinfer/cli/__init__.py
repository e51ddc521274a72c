"""Thin command-line layer: one module per subcommand, heavy imports deferred until the command runs."""
