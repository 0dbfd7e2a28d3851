"""`aivo-fl`: the operator's command line, mirroring the scripts of AIVO's activation guide."""

from __future__ import annotations

import argparse
import logging
import sys
import warnings
from collections.abc import Sequence

from aivo_fl.cli import demo_command, export_command, pipeline_commands, registry_commands
from aivo_fl.config import ConfigError
from aivo_fl.redaction import HidePasswords, hide_password
from aivo_fl.registry import DatabaseUnavailable, RegistryError

# Each command module adds its sub-commands; `func` on the parsed namespace runs one.
COMMAND_MODULES = [registry_commands, pipeline_commands, demo_command, export_command]

EXIT_CONFIG = 2
EXIT_DATABASE = 3
EXIT_REFUSED = 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aivo-fl",
        description="Federated learning for AIVO: registry, main model, learner clones, aggregation.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug output")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(message)s", stream=sys.stderr)
    for handler in logging.getLogger().handlers:
        handler.addFilter(HidePasswords())  # a logged URL never shows its password
    if not args.verbose:
        # Commands print their own progress; Dagster's beta/superseded notices are for developers.
        warnings.filterwarnings("ignore", message=r".*(is currently in beta|is superseded).*")
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"✗ {exc}", file=sys.stderr)  # already masked: ConfigError knows the raw values
        return EXIT_CONFIG
    except DatabaseUnavailable as exc:
        print(f"✗ {hide_password(str(exc))}. Check DATABASE_URL and that the database is running.", file=sys.stderr)
        return EXIT_DATABASE
    except RegistryError as exc:
        print(f"✗ {hide_password(str(exc))}", file=sys.stderr)
        return EXIT_REFUSED


if __name__ == "__main__":
    raise SystemExit(main())
