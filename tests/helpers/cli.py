"""Running the command line as a user does, and reading what it printed.

``run`` calls ``captioner.cli.main`` in this process (models stay loaded between calls, so a CLI test
costs what its command costs); ``run_process`` starts ``python -m captioner`` in a child process, for
what only a new process shows: settings read at import time (``HF_*``, ``CAPTIONER_*`` given as
``env``), import-time dependencies and the exit status of the interpreter itself. ``run`` with
``env`` is ``run_process``.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

from tests.helpers.paths import ROOT


def run_process(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "captioner", *map(str, args)], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=300)


def run(*args, env=None, cwd=None) -> subprocess.CompletedProcess:
    """The command's exit status and what it printed, as ``subprocess.run`` gives them."""
    if env:
        return run_process(*args, env=env, cwd=cwd)
    from captioner.cli import main

    argv = [str(arg) for arg in args]
    stdout, stderr = io.StringIO(), io.StringIO()
    before = Path.cwd()
    os.chdir(cwd or ROOT)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            try:
                status = main(argv)
            except SystemExit as stop:  # argparse's refusals and --help
                status = stop.code if isinstance(stop.code, int) else 0 if stop.code is None else 1
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(["captioner", *argv], status, stdout.getvalue(), stderr.getvalue())
