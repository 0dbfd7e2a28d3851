"""`aivo-fl`: the operator's command line, mirroring the scripts of AIVO's activation guide."""

from __future__ import annotations

import argparse
import logging
import sys
import traceback
import warnings
from collections.abc import Sequence

from aivo_fl.cli import demo_command, export_command, pipeline_commands, privacy_commands, registry_commands
from aivo_fl.redaction import HidePasswords, hide_password

# Each command module adds its sub-commands; `func` on the parsed namespace runs one.
COMMAND_MODULES = [registry_commands, pipeline_commands, demo_command, export_command, privacy_commands]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="aivo-fl",
        description="Federated learning for AIVO: registry, main model, learner clones, aggregation.",
    )
    parser.add_argument(
        "-v", "--verbose", action="store_true", help="log debug output and show tracebacks and Dagster's own log"
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # Commands print their own progress on stdout; stderr is for problems (so an epoch line logged by
    # the training loop is not printed a second time there).
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(message)s", stream=sys.stderr
    )
    for handler in logging.getLogger().handlers:
        handler.addFilter(HidePasswords())  # a logged URL never shows its password
    if not args.verbose:
        # Commands print their own progress; Dagster's beta/superseded notices are for developers.
        warnings.filterwarnings("ignore", message=r".*(is currently in beta|is superseded).*")
        logging.getLogger("alembic").setLevel(logging.WARNING)
    try:
        return int(args.func(args) or 0)
    except Exception as exc:
        # Imported here: the table pulls in the ML core, which `--help` does not need.
        from aivo_fl.operations.errors import diagnose

        if args.verbose:
            print(hide_password(traceback.format_exc()), file=sys.stderr, end="")
        diagnosis = diagnose(exc)
        print(f"✗ {hide_password(diagnosis.line)}", file=sys.stderr)
        return diagnosis.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
