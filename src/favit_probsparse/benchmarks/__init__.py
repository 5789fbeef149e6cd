"""Benchmarks that ship with the package (``favit-ps reproduce attention`` runs one without the checkout)."""
