"""Running the command line as a user does: ``python -m captioner`` in a child process."""

import os
import subprocess
import sys

from tests.helpers.paths import ROOT


def run(*args, env=None, cwd=None):
    return subprocess.run([sys.executable, "-m", "captioner", *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, cwd=cwd or ROOT, timeout=300)
