"""MkDocs hook: a line ``<!-- help: COMMAND -->`` becomes that command's ``--help``, taken from the
command line's own parser, so the documented options are the ones the code has. A command the parser
does not know stops the build."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

from mkdocs.exceptions import PluginError

MARKER = re.compile(r"^(?P<indent>[ \t]*)<!-- help: (?P<command>[\w-]+) -->[ \t]*$", re.MULTILINE)
ROOT = Path(__file__).resolve().parents[2]  # docs/hooks/cli_help.py -> the checkout
WIDTH = "100"  # columns of the rendered help, whatever the terminal that builds the site


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each command of ``python -m captioner`` and its parser."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def command_parsers() -> dict[str, argparse.ArgumentParser]:
    """The commands of the checkout this file is in (before any installed copy of the package)."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from captioner.cli import build_parser

    return subcommands(build_parser())


def on_page_markdown(markdown: str, page, config, files) -> str:
    if not MARKER.search(markdown):
        return markdown
    commands = command_parsers()

    def help_text(match: re.Match) -> str:
        name, indent = match["command"], match["indent"]
        if name not in commands:
            raise PluginError(f"{page.file.src_path}: `python -m captioner {name}` does not exist "
                              f"(commands: {', '.join(commands)})")
        previous = os.environ.get("COLUMNS")
        os.environ["COLUMNS"] = WIDTH  # argparse wraps to the terminal's width
        try:
            text = commands[name].format_help().rstrip()
        finally:
            if previous is None:
                del os.environ["COLUMNS"]
            else:
                os.environ["COLUMNS"] = previous
        lines = ["```text", *text.splitlines(), "```"]
        return "\n".join(indent + line if line else line for line in lines)

    return MARKER.sub(help_text, markdown)
