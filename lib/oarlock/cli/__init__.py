"""Every oarlock command (one module per command group); ``oarlock.cli.main:main`` is the entry point."""
