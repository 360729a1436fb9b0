"""Model cards (``README.md`` with Hub YAML metadata): writing one, and reading one for display
(its summary and its limits). huggingface_hub's ``ModelCard`` / ``ModelCardData`` do the YAML."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import yaml
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.repocard import REGEX_YAML_BLOCK

# Headings of sections about what a model cannot do: "Limitations", "Bias, risks and limitations",
# "What it can and cannot say", "Known issues", "Out-of-scope use", ...
_LIMIT_HEADINGS = re.compile(r"limit|bias|caveat|risk|out[- ]of[- ]scope|not (?:for|intended)|warning|"
                             r"can(?:not|'t| not)\b|known (?:issue|problem)|shortcoming|failure", re.I)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


@dataclass
class CardSummary:
    title: str = ""
    summary: str = ""  # the text between the title and the first section heading
    limits: list[tuple[str, str]] = field(default_factory=list)  # (heading, text) of limit/bias sections
    metadata: dict[str, Any] = field(default_factory=dict)  # the YAML front matter ({} if absent or invalid)
    body: str = ""  # the card without its front matter


def build_card(body: str, **metadata: Any) -> str:
    """A model card: ``metadata`` (``library_name``, ``license``, ``datasets``, ...) as Hub YAML, then ``body``."""
    data = ModelCardData(library_name="captioner", pipeline_tag="image-to-text", **metadata)
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body.strip()}\n"))


def read_card(card: str) -> tuple[dict[str, Any], str]:
    """(metadata, body) of a model card; broken or missing metadata gives ``{}``. Never raises."""
    try:
        parsed = ModelCard(card, ignore_metadata_errors=True)
        return parsed.data.to_dict(), parsed.text
    except (yaml.YAMLError, ValueError):  # metadata that is not YAML, or not a mapping
        match = REGEX_YAML_BLOCK.search(card)
        return {}, card[match.end():] if match else card


def summarize_card(card: str) -> CardSummary:
    """Split a model card into title, summary, limit sections and metadata; never raises."""
    metadata, body = read_card(card)
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
