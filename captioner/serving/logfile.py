"""Keep Ray's own output out of a command's terminal: into a log file, with a stream left for the user.

Ray's processes (the driver's core worker, the raylet, the workers a local cluster starts) write
log lines, warnings and, when a process dies, crash reports straight to the file descriptors they
inherit. Python-level settings cannot silence them, so ``output_to`` points this process's
descriptors 1 and 2 at a log file for the duration (processes started meanwhile inherit it) and
yields a stream to the real terminal for the progress bar.
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO


def default_log_path(command: str) -> Path:
    """A new log file for one run of ``command`` in the temporary folder."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(tempfile.gettempdir()) / f"captioner-{command}-{stamp}-{os.getpid()}.log"


@contextlib.contextmanager
def output_to(log_path: str | os.PathLike) -> Iterator[TextIO]:
    """Everything written to stdout and stderr (by Python, native code, and child processes started
    inside the block) goes to ``log_path`` (appended); yields a text stream to the terminal."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)
    terminal = os.fdopen(os.dup(saved[1]), "w", buffering=1, encoding=sys.stderr.encoding or "utf-8",
                         errors="replace")
    with open(log_path, "ab", buffering=0) as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield terminal
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            for descriptor in saved:
                os.close(descriptor)
            terminal.close()
