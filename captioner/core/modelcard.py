"""Reading a model card (``README.md`` with Hub YAML metadata) for display: its summary and its limits."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from huggingface_hub.repocard import REGEX_YAML_BLOCK

_LIMIT_HEADINGS = re.compile(r"limit|bias|caveat|risk|out[- ]of[- ]scope|not (?:for|intended)|warning", re.I)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class CardSummary:
    title: str = ""
    summary: str = ""  # the text between the title and the first section heading
    limits: list[tuple[str, str]] = field(default_factory=list)  # (heading, text) of limit/bias sections
    metadata: dict[str, Any] = field(default_factory=dict)  # the YAML front matter ({} if absent or invalid)
    body: str = ""  # the card without its front matter


def summarize_card(card: str) -> CardSummary:
    """Split a model card into title, summary, limit sections and metadata; never raises."""
    metadata: dict[str, Any] = {}
    body = card
    match = REGEX_YAML_BLOCK.search(card)
    if match:
        body = card[match.end():]
        try:
            loaded = yaml.safe_load(match.group(2))
            metadata = loaded if isinstance(loaded, dict) else {}
        except yaml.YAMLError:
            pass
    title, intro, sections = "", [], []  # sections: [level, heading, lines]
    in_code = False
    for line in body.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            in_code = not in_code
        heading = None if in_code else _HEADING.match(line)
        if heading and len(heading.group(1)) == 1 and not title and not sections:
            title = heading.group(2)
        elif heading:
            sections.append([len(heading.group(1)), heading.group(2), []])
        elif sections:
            sections[-1][2].append(line)
        else:
            intro.append(line)
    limits = []
    inside: int | None = None  # level of the limit section being copied, with its subsections
    for index, (level, heading, lines) in enumerate(sections):
        if inside is not None and level > inside:
            continue
        inside = None
        if not _LIMIT_HEADINGS.search(heading):
            continue
        inside = level
        for deeper_level, deeper_heading, deeper_lines in sections[index + 1:]:  # keep its subsections
            if deeper_level <= level:
                break
            lines = [*lines, "", f"{'#' * deeper_level} {deeper_heading}", *deeper_lines]
        limits.append((heading, "\n".join(lines).strip()))
    return CardSummary(title, "\n".join(intro).strip(), limits, metadata, body.strip())
