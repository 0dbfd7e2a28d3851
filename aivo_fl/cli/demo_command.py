"""`aivo-fl demo`: the main job on the embedded default, end to end."""

from __future__ import annotations

import argparse

from aivo_fl.cli import registry_commands


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser("demo", help="run the main job: migrate, then print the registry statistics")
    p.set_defaults(func=cmd_demo)


def cmd_demo(args: argparse.Namespace) -> int:
    registry_commands.cmd_migrate(argparse.Namespace(revision="head"))
    print()
    return registry_commands.cmd_stats(argparse.Namespace(json=False))
