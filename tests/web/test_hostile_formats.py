"""Crafted image files against the real app over HTTP: ``python app.py`` on a free port, 16 clients
(each its own address) sending the same attack at once through the ``caption`` endpoint.

Each attack is refused with its message or captioned, the app's resident memory stays within the
512 MB decode budget plus what the requests themselves hold, returns to idle afterwards, and the
next normal request is captioned. The figures printed here are those in docs/security.md.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from captioner.core.images.memory import DECODE_BUDGET_BYTES
from tests.helpers import hostile_images
from tests.helpers.app import make_app_model
from tests.helpers.app_process import Server, PeakRSS
from tests.helpers.paths import EXAMPLES

MB = 1024 * 1024
REQUESTS = 16
# Beside the decodes: sixteen requests' bodies and uploads, the model's forward passes on up to
# eight of them at once (the app's caption concurrency), Gradio's own bookkeeping.
REQUEST_OVERHEAD = 256 * MB
pytestmark = [pytest.mark.slow, pytest.mark.stress, pytest.mark.timeout(1800)]

ATTACKS = {  # file name: (builder, the error every request gets, or None: captioned)
    "icon.ico": (hostile_images.ico_holding_png, "unsupported image format: ICO icon"),
    "float.tif": (hostile_images.tiff, None),
    "lossless.webp": (hostile_images.lossless_webp, "image too large to decode: a 7000 x 7000 lossless WebP needs"),
    "progressive.jpg": (hostile_images.progressive_jpeg, None),
    "thin16.png": (lambda: hostile_images.png(1000, 49000, bit_depth=16), None),
    "truncated.jpg": (hostile_images.truncated_jpeg, "truncated or corrupt image"),
    "truncated-ended.jpg": (lambda: hostile_images.truncated_jpeg() + b"\xff\xd9", "truncated or corrupt image"),
}


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    model = make_app_model(tmp_path_factory.getbasetemp() / "app-model")
    running = Server(model, tmp_path_factory.mktemp("hostile-formats"))
    yield running
    running.close()


def _caption_normal_photo(app: Server) -> None:
    status, result = app.call([app.upload((EXAMPLES / "coffee.jpg").read_bytes(), "coffee.jpg"), 3, 3, 20, "generalise"])
    assert status == "ok" and result["caption"], result


@pytest.mark.parametrize("name", list(ATTACKS))
def test_sixteen_clients_sending_a_crafted_file_at_once(app, name, tmp_path):
    make, refusal = ATTACKS[name]
    data = make()
    _caption_normal_photo(app)
    time.sleep(1)
    idle = app.rss()

    def attack(i: int) -> tuple[str, object]:
        headers = {"X-Forwarded-For": f"10.9.{len(name)}.{i}"}  # sixteen clients (uvicorn trusts it from 127.0.0.1)
        return app.call([app.upload(data, f"{i}-{name}", headers), 1, 1, 20, "generalise"], headers=headers)

    started = time.monotonic()
    with PeakRSS(app.ps) as memory, ThreadPoolExecutor(REQUESTS) as pool:
        answers = list(pool.map(attack, range(REQUESTS)))
    seconds = time.monotonic() - started
    for status, result in answers:
        if refusal is None:
            assert status == "ok" and result["caption"], result
        else:
            assert status == "error" and result.startswith(refusal), result
            assert str(app.upload_dir) not in result and not re.search(r"/(tmp|home|work|root)/", result), result
    growth = memory.peak - idle
    deadline = time.monotonic() + 30
    while app.rss() > idle + 64 * MB and time.monotonic() < deadline:
        time.sleep(0.5)
    after = app.rss() - idle
    print(f"\n{name} ({len(data) / 1024:.0f} KB) x {REQUESTS}: {answers[0][0]} "
          f"({answers[0][1] if answers[0][0] == 'error' else answers[0][1]['caption']!r}); idle {idle / MB:.0f} MB, "
          f"peak +{growth / MB:.0f} MB, after +{after / MB:.0f} MB, {seconds:.0f} s")
    assert growth < DECODE_BUDGET_BYTES + REQUEST_OVERHEAD
    assert after <= 64 * MB
    _caption_normal_photo(app)
