"""Run `aivo-fl` commands in a scratch folder with a controlled environment.

`run_cli` calls the command line's `main()` in this process, the way the console script does, with
the folder as working directory, the environment given, stdout and stderr captured and the exit
code returned: it skips the ~3 s of interpreter, torch and Dagster start-up a subprocess pays. What
only a real process shows (output printed by another process, a SIGKILL, the console script
itself) goes through `run_cli_subprocess`, which has the same signature.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import pytest

from aivo_fl.cli.main import main
from aivo_fl.operations.faults import KILL_AT_VARIABLE
from tests.conftest import CONFIG_VARIABLES

AIVO_FL = str(Path(sys.executable).with_name("aivo-fl"))

RunCli = Callable[..., subprocess.CompletedProcess[str]]


def _clean_environment(folder: Path, env: dict[str, str] | None) -> dict[str, str]:
    """This process's environment without any setting, the folder's own Dagster home, then `env`."""
    full_env = {k: v for k, v in os.environ.items() if k not in CONFIG_VARIABLES}
    full_env["DAGSTER_HOME"] = str(folder / "dagster_home")
    full_env.update(env or {})
    return full_env


def run_in_process(folder: Path, args: tuple[str, ...], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`aivo-fl ARGS` as its own process would run it: working directory, environment, root logger and
    warning filters are the command's for the call and restored after it."""
    if KILL_AT_VARIABLE in env:
        raise ValueError(f"{KILL_AT_VARIABLE} kills the process it is set in: use run_cli_subprocess")
    saved_env, saved_cwd = dict(os.environ), Path.cwd()
    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    out, err = io.StringIO(), io.StringIO()
    try:
        os.environ.clear()
        os.environ.update(env)
        os.chdir(folder)
        root.handlers = []  # so main()'s logging.basicConfig writes to the captured stderr, as it would
        with redirect_stdout(out), redirect_stderr(err), warnings.catch_warnings():  # main() adds filters
            code = _exit_code(args)
    finally:
        for handler in root.handlers:
            handler.close()
        root.handlers, root.level = saved_handlers, saved_level
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess([AIVO_FL, *args], code, out.getvalue(), err.getvalue())


def _exit_code(args: tuple[str, ...]) -> int:
    try:
        return main(list(args))
    except SystemExit as exc:  # argparse: --help (0) and usage errors (2)
        if exc.code is None or isinstance(exc.code, int):
            return exc.code or 0
        print(exc.code, file=sys.stderr)
        return 1


def in_process(folder: Path) -> RunCli:
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return run_in_process(folder, args, _clean_environment(folder, env))

    return run


def in_a_subprocess(folder: Path) -> RunCli:
    def run(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [AIVO_FL, *args],
            cwd=folder,
            env=_clean_environment(folder, env),
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    return run


@pytest.fixture
def run_cli(tmp_path: Path) -> RunCli:
    return in_process(tmp_path)


@pytest.fixture
def run_cli_subprocess(tmp_path: Path) -> RunCli:
    return in_a_subprocess(tmp_path)
