"""Reading model cards for display: the bundled model's limits are found."""

from captioner.core.repository.modelcard import summarize_card
from captioner.core.repository.storage import BUNDLED_MODEL_DIR


def test_the_bundled_cards_limits_section_is_found():
    card = summarize_card((BUNDLED_MODEL_DIR / "README.md").read_text(encoding="utf-8"))
    headings = [heading for heading, _ in card.limits]
    assert headings == ["What it can and cannot say"]
    assert "cannot describe actions, counts" in card.limits[0][1]


def test_limit_headings_cards_commonly_use():
    for heading in ("Limitations", "Bias, risks, and limitations", "What it cannot do", "Known issues",
                    "Out-of-scope use", "What the model can't see"):
        card = summarize_card(f"# Model\n\nIntro.\n\n## {heading}\n\nSome text.\n\n## Training\n\nEpochs.\n")
        assert [h for h, _ in card.limits] == [heading], heading
    assert summarize_card("# Model\n\n## Training\n\nEpochs.\n").limits == []
