"""`python -m vitprune book` (`make book`): the executed study as static pages (vitprune.study.book)."""

from __future__ import annotations

import argparse

from vitprune.study import book, config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m vitprune book", description=__doc__)
    parser.add_argument("--profile", default=config.DEFAULT_PROFILE)
    parser.add_argument("--runs-root", default=None, help="where the runs are (default: <repo>/runs)")
    parser.add_argument("--out", default=None, help="folder to write (default: <repo>/book/<profile>)")
    args = parser.parse_args(argv)
    built = book.build(args.profile, runs_root=args.runs_root, out=args.out)
    print(f"book: {built['pages']} pages in {built['seconds']:.1f} s -> {built['out'] / 'index.html'}")
    return 0
