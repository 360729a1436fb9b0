"""The documentation: the site builds with ``mkdocs build --strict`` (broken links, missing anchors and
pages, and API reference entries whose module moved all fail), every command has its help on the
command-line page, and the README's runnable blocks run as written.

A README block is runnable when its info string is ``sh runnable`` or ``python runnable``
(docs/development.md): it is run in a temporary copy of the repository whose ``.venv`` is this test's
environment, offline, and must succeed.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.paths import ROOT

pytest.importorskip("mkdocs", reason="the docs tools are in requirements-dev.txt")
pytest.importorskip("material", reason="the docs tools are in requirements-dev.txt")
pytest.importorskip("mkdocstrings_handlers.python", reason="the docs tools are in requirements-dev.txt")

README = ROOT / "README.md"
RUNNABLE = re.compile(r"^```(?P<language>sh|python) runnable\n(?P<code>.*?)^```$", re.DOTALL | re.MULTILINE)
HELP_MARKER = re.compile(r"^[ \t]*<!-- help: (?P<command>[\w-]+) -->[ \t]*$", re.MULTILINE)
BUILD_SECONDS = 300
BLOCK_SECONDS = 600


def _mkdocs_build(config: Path, site: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config),
                           "--site-dir", str(site)], cwd=config.parent, env=env, capture_output=True,
                          text=True, timeout=BUILD_SECONDS)


# ----------------------------------------------------------------------------- the site

@pytest.mark.slow
def test_the_site_builds_strictly_with_the_cli_help_and_the_api_reference(tmp_path):
    build = _mkdocs_build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert build.returncode == 0, build.stdout + build.stderr
    cli = (tmp_path / "site" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "usage: python -m captioner caption" in cli and "--beam-size" in cli
    reference = (tmp_path / "site" / "reference" / "inference" / "index.html").read_text(encoding="utf-8")
    assert "load_captioner" in reference and "Captioner" in reference
    assert not (tmp_path / "site" / "hooks").exists()  # the build's own code is not published


def _site_with_page(tmp_path: Path, page: str) -> Path:
    """A copy of the site's configuration whose only page is ``page``: how a broken page fails."""
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "index.md").write_text(page, encoding="utf-8")
    config = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    config = config[:config.index("\nnav:")] + "\nnav:\n  - index.md\n"
    config = config.replace("paths: [.]", f"paths: [{ROOT}]").replace(
        "  - docs/hooks/cli_help.py", f"  - {ROOT / 'docs' / 'hooks' / 'cli_help.py'}")
    (tmp_path / "mkdocs.yml").write_text(config, encoding="utf-8")
    return tmp_path / "mkdocs.yml"


@pytest.mark.parametrize("page, message", [
    ("# Moved\n\n::: captioner.core.no_such_module\n", "captioner.core.no_such_module"),
    ("# Gone\n\n<!-- help: no-such-command -->\n", "no-such-command"),
], ids=["reference-to-a-moved-module", "help-of-a-missing-command"])
def test_a_page_that_documents_what_the_code_lacks_stops_the_build(tmp_path, page, message):
    build = _mkdocs_build(_site_with_page(tmp_path, page), tmp_path / "site")
    assert build.returncode != 0
    assert message in build.stdout + build.stderr


def test_every_command_has_its_help_on_the_cli_page():
    spec = importlib.util.spec_from_file_location("cli_help", ROOT / "docs" / "hooks" / "cli_help.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    documented = HELP_MARKER.findall((ROOT / "docs" / "cli.md").read_text(encoding="utf-8"))
    assert sorted(documented) == sorted(hook.command_parsers())


# ----------------------------------------------------------------------------- the README

def test_the_readme_is_short_keeps_the_space_front_matter_and_links_to_pages_that_exist():
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 250
    assert text.startswith("---\n") and "\nsdk: gradio\n" in text and "\napp_file: app.py\n" in text
    links = re.findall(r"\]\((docs/[^)#]+)", text)
    assert len(links) >= 10
    assert [link for link in links if not (ROOT / link).is_file()] == []


def _runnable_blocks() -> list[tuple[str, str]]:
    return [(m["language"], m["code"]) for m in RUNNABLE.finditer(README.read_text(encoding="utf-8"))]


def test_the_readme_has_runnable_shell_and_python_blocks():
    assert {language for language, _ in _runnable_blocks()} == {"sh", "python"}


@pytest.fixture(scope="module")
def repository_copy(tmp_path_factory) -> Path:
    """The repository's files (tracked and new, not ignored ones) in a temporary folder, with this
    test's environment as its ``.venv``, as ``make demo`` and ``make test`` leave a checkout."""
    if sys.prefix == sys.base_prefix:
        pytest.skip("the README's commands run in a virtual environment; these tests do not")
    copy = tmp_path_factory.mktemp("checkout")
    listed = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"], cwd=ROOT,
                            capture_output=True, text=True)
    if listed.returncode == 0:
        for name in filter(None, listed.stdout.split("\0")):
            source = ROOT / name
            if source.is_file():
                (copy / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, copy / name)
    else:  # not a git checkout: everything but what a checkout ignores
        shutil.copytree(ROOT, copy, dirs_exist_ok=True, ignore=shutil.ignore_patterns(
            ".git", ".venv", "__pycache__", ".pytest_cache", "site", "test-artifacts", ".cache"))
    (copy / ".venv").symlink_to(sys.prefix, target_is_directory=True)
    return copy


@pytest.mark.slow
@pytest.mark.parametrize("number", range(len(_runnable_blocks())), ids=lambda n: f"block-{n + 1}")
def test_a_runnable_readme_block_succeeds(repository_copy, number):
    language, code = _runnable_blocks()[number]
    command = ["bash", "-e", "-o", "pipefail", "-c", code] if language == "sh" else \
        [str(repository_copy / ".venv" / "bin" / "python"), "-c", code]
    env = {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1", GRADIO_ANALYTICS_ENABLED="False",
               OMP_NUM_THREADS="1")
    run = subprocess.run(command, cwd=repository_copy, env=env, capture_output=True, text=True,
                         timeout=BLOCK_SECONDS)
    assert run.returncode == 0, f"README {language} block {number + 1} failed:\n{code}\n{run.stdout}\n{run.stderr}"
    assert run.stdout.strip(), "the block printed nothing"
