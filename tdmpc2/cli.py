"""Command-line arguments of the helper scripts: ``key=value`` pairs over a table of defaults."""
from __future__ import annotations


def parse_key_values(argv: list[str], defaults: dict) -> dict:
    """Return ``defaults`` overridden by the ``key=value`` arguments in ``argv`` (values as strings).

    Raises ValueError naming the argument for one that is not ``key=value`` or whose key is not in ``defaults``.
    """
    options = dict(defaults)
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or not value:
            raise ValueError(f"arguments are key=value, got {arg!r}; keys: {', '.join(defaults)}")
        if key not in defaults:
            raise ValueError(f"unknown key {key!r}; allowed keys: {', '.join(defaults)}")
        options[key] = value
    return options
