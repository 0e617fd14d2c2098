"""Command-line scripts of the course (importable as ``scripts.<name>`` from the repository root)."""
