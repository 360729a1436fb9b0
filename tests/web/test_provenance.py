"""Where the app's weights came from and what it runs on, as the Model tab says it."""

from __future__ import annotations

import re
from pathlib import Path

from huggingface_hub import snapshot_download

from captioner.core.repository.storage import BUNDLED_MODEL_DIR
from captioner.web import provenance
from captioner.web.views import model_panel
from tests.helpers.hub import hub


def test_weights_origin_names_bundled_hub_and_local_models(hub, tiny_model_dir):
    assert provenance.weights_origin(None, BUNDLED_MODEL_DIR) == "bundled with the app (`models/default`)"
    hub.add_repo("team/captioner", tiny_model_dir)
    commit = hub.add_repo("team/captioner", tiny_model_dir, revision="v2")
    path = Path(snapshot_download("team/captioner", revision="v2"))
    line = provenance.weights_origin("team/captioner@v2", path)
    assert line == f"Hugging Face Hub model `team/captioner`, revision `v2` (commit `{commit[:12]}`)"
    assert "revision `main`" in provenance.weights_origin("team/captioner", snapshot_download("team/captioner"))
    assert provenance.weights_origin(str(tiny_model_dir), tiny_model_dir) == f"local folder `{tiny_model_dir}`"


def test_hardware_summary(monkeypatch):
    for name in ("SPACES_ZERO_GPU", "SYSTEM", "SPACE_ID"):
        monkeypatch.delenv(name, raising=False)
    assert provenance.hardware_summary("cpu") == "CPU"
    monkeypatch.setenv("SYSTEM", "spaces")
    monkeypatch.setenv("SPACE_ID", "me/demo")
    monkeypatch.setenv("SPACES_ZERO_GPU", "true")
    line = provenance.hardware_summary("cuda")
    assert line.startswith("ZeroGPU") and "`me/demo`" in line


def test_model_panel_says_where_the_weights_came_from(tiny_model_dir, monkeypatch):
    monkeypatch.delenv("SPACES_ZERO_GPU", raising=False)
    from captioner.core.inference import load_captioner

    panel = model_panel(load_captioner(tiny_model_dir, "cpu"), None)
    assert f"**Weights:** local folder `{tiny_model_dir}`" in panel
    assert re.search(r"\*\*Hardware:\*\* CPU", panel)
