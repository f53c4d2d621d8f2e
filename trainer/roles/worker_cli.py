"""``edgeloop worker``: see trainer/roles/cli.py."""

from __future__ import annotations

import argparse

from . import cli


def configure(parser: argparse.ArgumentParser) -> None:
    cli.configure(parser, "worker")


def run(args: argparse.Namespace) -> int:
    return cli.run(args, "worker")
