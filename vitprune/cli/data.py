"""`python -m vitprune data ...`: cache | export | check datasets (the parser is `vitprune.data.main`
until the data package's own command-line module replaces this file)."""

from __future__ import annotations

from vitprune import data


def main(argv: list[str]) -> int:
    return data.main(argv)
