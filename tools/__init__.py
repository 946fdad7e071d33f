"""Project tooling, run from a checkout (not installed): `python -m tools.side_by_side`."""
