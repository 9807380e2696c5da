"""CLI command modules: one per pipeline step (registered in ``dwp.cli``)."""
