"""The public app attacked as a stranger would: the real ``python app.py`` on a free port, driven over
HTTP with httpx, raw sockets and gradio_client, its memory read with psutil.

Covers SECURITY.md's promises: no file on the server is read unless it was uploaded with the request
(whichever way a path is sent), request bodies over the caps are refused before they are read,
worst-case images cost bounded memory that is handed back, one client cannot make others wait
behind its batches, and every bad setting gets a message that names it.
"""

from __future__ import annotations

import base64
import io
import json
import math
import re
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from gradio_client import Client, handle_file
from gradio_client.exceptions import AppError, ValidationError
from PIL import Image

from captioner.web.app import CONCURRENCY
from captioner.web.guards import (
    MAX_INLINE_IMAGE_BYTES,
    MAX_JSON_BODY_BYTES,
    MAX_UPLOAD_DIR_BYTES,
    MAX_UPLOAD_REQUEST_BYTES,
    REFUSED_PATH,
    InputRefused,
    upload_source,
)
from captioner.web.handlers import SAY_LESS, SHARES
from tests.helpers.app import make_app_model
from tests.helpers.app_process import FILE_META, PeakRSS, Server, poll, raw_post
from tests.helpers.app_process import detail as _detail
from tests.helpers.huge_png import write_rgba16_png
from tests.helpers.paths import ROOT

EXAMPLE = ROOT / "examples" / "coffee.jpg"
UNSURE = "generalise"  # the API's when_unsure input (the page's is handlers.SAY_LESS)
MEMORY_BUDGET = 1024 * 1024 * 1024  # peak RSS above idle for 16 concurrent worst-case images (SECURITY.md)
EXPLAIN_MEMORY_BUDGET = 384 * 1024 * 1024  # peak RSS above idle for the word heatmaps of one huge photo (SECURITY.md)
pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("security")


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    model = make_app_model(tmp_path_factory.getbasetemp() / "app-model")
    running = Server(model, folder)
    yield running
    running.close()


@pytest.fixture(scope="module")
def huge_png(folder) -> bytes:
    """7000 x 7000 pixels of 16-bit RGBA (49 megapixels, under the 50 MP cap) in about 600 KB."""
    return write_rgba16_png(folder / "huge.png").read_bytes()


@pytest.fixture(scope="module")
def huge_jpeg() -> bytes:
    """scikit-image's coffee photo (examples/coffee.jpg) upscaled to 8400 x 5600 (47 megapixels, under
    the 50 MP cap): a camera photo as large as the app accepts."""
    buffer = io.BytesIO()
    with Image.open(EXAMPLE) as photo:
        photo.convert("RGB").resize((8400, 5600), Image.Resampling.BILINEAR).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def _assert_still_serving(server: Server) -> None:
    status, result = server.call([server.upload(EXAMPLE.read_bytes(), "coffee.jpg"), 3, 3, 20, UNSURE])
    assert status == "ok" and result["caption"], result


# ---- 1. only files uploaded with the request are read -------------------------------------------------

def _path_forms(path: str) -> dict[str, object]:
    """Every shape in which the API accepts a file, carrying a server path."""
    return {"dict without meta": {"path": path}, "dict with meta": {"path": path, "meta": FILE_META},
            "dict with meta and url": {"path": path, "url": f"/gradio_api/file={path}", "meta": FILE_META},
            "bare string": path, "url field": {"url": f"file://{path}"}}


def _without_paths(message: str) -> str:
    """The message with the paths it echoes (as sent, or made absolute) taken out."""
    message = re.sub(r"input_value='[^']*'", "input_value=<path>", message)
    return re.sub(r"(file://)?/\S*", "<path>", message)


@pytest.mark.slow
def test_server_paths_are_refused_the_same_way_whether_or_not_they_exist(server, folder):
    secret = folder / "secret.png"
    secret.write_bytes(EXAMPLE.read_bytes())  # an image the server can read: it must never be captioned
    (folder / "notes.txt").write_text("password=hunter2")
    inside_then_out = f"{server.upload_dir}/../secret.png"
    cases = {"existing image": str(secret), "existing text": str(folder / "notes.txt"), "directory": str(folder),
             "missing": str(folder / "no-such-file.png"), "system file": "/etc/passwd",
             "escape from the upload folder": inside_then_out}
    for form in _path_forms("X"):
        messages = {}
        for name, path in cases.items():
            payload = _path_forms(path)[form]
            for route, answer in [("call", server.call([payload, 3, 3, 20, UNSURE])),
                                  ("api join", server.join("caption", [payload, 3, 3, 20, UNSURE])),
                                  ("page join", server.join("caption_photo", [payload, "Beam search", 3, 3, 20, SAY_LESS])),
                                  ("explain", server.call([payload, "", 3, 20], api="explain"))]:
                status, message = answer
                assert status == "error", (form, name, route, message)  # no caption
                assert message, (form, name, route)
                messages[(name, route)] = _without_paths(str(message))
        for route in ("call", "api join", "page join", "explain"):
            distinct = {messages[(name, route)] for name in cases}
            assert len(distinct) == 1, (form, route, distinct)  # says nothing about the path
    status, message = server.call([{"path": str(secret)}, 3, 3, 20, UNSURE])
    assert message == REFUSED_PATH
    _assert_still_serving(server)


def test_the_batch_tab_reads_only_uploads(server):
    for payload in ({"path": "/etc/passwd"}, {"path": "/etc/passwd", "meta": FILE_META}, "/etc/passwd"):
        status, message = server.join("caption_batch", [[payload], "Beam search", 3, 20, SAY_LESS])
        assert status == "error" and message, payload
        assert "root:" not in str(message)


@pytest.mark.slow
def test_gradio_client_path_dicts_are_refused(server):
    client = Client(server.url, verbose=False)
    for path in ("/etc/passwd", str(EXAMPLE), "/no/such/file.png"):
        with pytest.raises((AppError, ValidationError)) as refused:  # refused in the handler or before the queue
            client.predict({"path": path}, api_name="/caption")
        assert REFUSED_PATH in str(refused.value)
    assert client.predict(handle_file(EXAMPLE), api_name="/caption")["caption"]


def test_web_addresses_are_not_fetched(server):
    status, message = server.call([{"path": "http://127.0.0.1:9/image.png"}, 3, 3, 20, UNSURE])
    assert status == "error" and "not fetched" in message


# ---- 4. every limit applies to every input path ------------------------------------------------------

def test_an_oversized_data_url_is_refused_before_it_is_read(server):
    payload_size = 400 * 1024 * 1024
    prefix = b'{"data": [{"url": "data:image/jpeg;base64,'
    chunk = b"A" * (1024 * 1024)

    def body():
        yield prefix
        for _ in range(payload_size // len(chunk)):
            yield chunk

    with PeakRSS(server.ps) as memory:
        status, text, sent = raw_post(server.port, "/gradio_api/call/caption",
                                       {"Content-Type": "application/json", "Content-Length": str(payload_size + 100)},
                                       body())
    assert status == 413 and "too large" in text and "400.0 MB" in text
    assert sent < payload_size / 4  # answered long before the body was sent
    assert memory.peak - memory.start < payload_size / 10
    # without a Content-Length (chunked), the body is counted as it arrives and cut off at the cap
    with PeakRSS(server.ps) as memory:
        status, text, sent = raw_post(server.port, "/gradio_api/call/caption", {"Content-Type": "application/json"},
                                       body(), chunked=True)
    assert status == 413 and "too large" in text
    assert sent < payload_size / 4
    assert memory.peak - memory.start < payload_size / 10
    _assert_still_serving(server)


def test_a_data_url_over_the_inline_cap_is_refused_on_its_encoded_length(server):
    encoded = "A" * (MAX_INLINE_IMAGE_BYTES // 3 * 4 + 4000)  # under the body cap, over the image cap
    assert len(encoded) + 200 < MAX_JSON_BODY_BYTES
    status, message = server.call([{"url": "data:image/png;base64," + encoded}, 3, 3, 20, UNSURE])
    assert status == "error" and "too large" in message and "upload it as a file" in message
    status, message = server.call([{"url": "data:image/png;base64,!!not base64!!"}, 3, 3, 20, UNSURE])
    assert status == "error" and "not valid base64" in message
    small = base64.b64encode(EXAMPLE.read_bytes()).decode()
    status, result = server.call([{"url": "data:image/jpeg;base64," + small}, 3, 3, 20, UNSURE])
    assert status == "ok" and result["caption"]


def test_uploads_over_the_request_cap_are_refused(server):
    """Three files of 90 MB: each under the per-file cap (100 MB), together over the request cap."""
    chunk = b"\x00" * (1024 * 1024)
    boundary = "captionerboundary"
    size = 3 * 90 * len(chunk)
    assert size > MAX_UPLOAD_REQUEST_BYTES

    def body():
        for i in range(3):
            yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"a{i}.png\"\r\n"
                   "Content-Type: image/png\r\n\r\n").encode()
            for _ in range(90):
                yield chunk
            yield b"\r\n"
        yield f"--{boundary}--\r\n".encode()

    content_type = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    status, text, sent = raw_post(server.port, "/gradio_api/upload", {**content_type, "Content-Length": str(size)},
                                   body())
    assert status == 413 and "upload is too large" in text and sent < size / 2
    status, text, sent = raw_post(server.port, "/gradio_api/upload", content_type, body(), chunked=True)
    assert status == 413 and "upload is too large" in text
    assert sent < MAX_UPLOAD_REQUEST_BYTES + 20 * 1024 * 1024
    _assert_still_serving(server)


@pytest.mark.slow
def test_uploads_are_refused_while_the_upload_folder_is_full(server, folder):
    """Over 4 GB of uploads waiting to expire (here one sparse file, which counts at its full size
    and takes no disk): uploads get 507 and a message, inline images are still captioned, and
    uploads work again once the folder is back under its cap. The folder's size is measured at most
    every 10 seconds."""
    def upload_status():
        return httpx.post(f"{server.api}/upload", files={"files": ("coffee.jpg", EXAMPLE.read_bytes())},
                          timeout=60)

    filler = server.upload_dir / "filler.bin"
    with open(filler, "wb") as sparse:
        sparse.truncate(MAX_UPLOAD_DIR_BYTES + 1)
    try:
        refused = poll(upload_status, lambda response: response.status_code != 200)
        assert refused.status_code == 507 and "upload space is full" in _detail(refused)
        inline = "data:image/jpeg;base64," + base64.b64encode(EXAMPLE.read_bytes()).decode()
        status, result = server.call([{"url": inline}, 1, 1, 20, UNSURE])
        assert status == "ok" and result["caption"]
    finally:
        filler.unlink()
    assert poll(upload_status, lambda response: response.status_code == 200).status_code == 200


@pytest.mark.slow
def test_a_batch_over_its_byte_cap_is_refused_before_it_is_read(server, folder):
    """Six files of 90 MB uploaded in three requests (each under the request cap): the batch adds up
    to 540 MB, over its 500 MB cap, and is refused with a message before any file is opened."""
    part = folder / "part.jpg"
    with open(part, "wb") as sparse:
        sparse.truncate(90 * 1024 * 1024)
    uploads = []
    try:
        for i in range(3):
            with open(part, "rb") as first, open(part, "rb") as second:
                response = httpx.post(f"{server.api}/upload", files=[("files", (f"a{i}.jpg", first)),
                                                                     ("files", (f"b{i}.jpg", second))], timeout=300)
            response.raise_for_status()
            uploads += [{"path": path, "orig_name": Path(path).name, "meta": FILE_META} for path in response.json()]
        assert len({upload["path"] for upload in uploads}) == 6
        status, message = server.join("caption_batch", [uploads, "Greedy", 3, 20, SAY_LESS])
        assert status == "error" and "540 MB" in message and "limit 500 MB per batch" in message, message
    finally:
        part.unlink()
        for upload in uploads:
            Path(upload["path"]).unlink(missing_ok=True)
    _assert_still_serving(server)


# ---- 5. clear errors, nothing coerced ----------------------------------------------------------------

BAD_VALUES = {"non-numeric": "abc", "NaN": math.nan, "infinity": math.inf, "boolean": True, "fraction": 2.5,
              "zero": 0}


@pytest.mark.parametrize("parameter, position", [("beam_size", 1), ("num_candidates", 2), ("max_length", 3)])
def test_each_bad_setting_gets_a_message_naming_it(server, parameter, position):
    image = server.upload(EXAMPLE.read_bytes(), "coffee.jpg")
    for kind, value in BAD_VALUES.items():
        data = [image, 3, 3, 20, UNSURE]
        data[position] = value
        status, message = server.call(data, raw=json.dumps({"data": data}).encode())  # NaN / Infinity literals
        assert status == "error", (parameter, kind)
        assert message and parameter in message, (parameter, kind, message)
        assert "must be a whole number" in message
    status, result = server.call([image, 3, 3, 20, UNSURE])
    assert status == "ok" and result["caption"]


@pytest.mark.slow
def test_bad_settings_through_gradio_client_and_the_page(server):
    client = Client(server.url, verbose=False)
    for value in (2.5, True, 0, 51):
        with pytest.raises(AppError, match="beam_size must be a whole number from 1 to 50"):
            client.predict(handle_file(EXAMPLE), beam_size=value, api_name="/caption")
    with pytest.raises(AppError, match=r"num_candidates must be a whole number from 1 to 2 \(at most beam_size"):
        client.predict(handle_file(EXAMPLE), beam_size=2, num_candidates=3, api_name="/caption")
    image = server.upload(EXAMPLE.read_bytes(), "coffee.jpg")
    status, message = server.join("caption_photo", [image, "Sampling", 3, 3, 20, SAY_LESS])
    assert status == "error" and "search" in message and "Beam search" in message
    for position, name in [(2, "beam_size"), (3, "num_candidates"), (4, "max_length")]:
        for value in ("abc", 2.5, True):
            data = [image, "Beam search", 3, 3, 20, SAY_LESS]
            data[position] = value
            status, message = server.join("caption_photo", data)
            assert status == "error" and name in message, (name, value, message)
    for value in ("abc", 2.5, True, math.inf):
        status, message = server.call([image, "", value, 20], api="explain")
        assert status == "error" and "beam_size" in message, (value, message)
    status, message = server.join("caption_batch", [[image], "Beam search", 3, 0, SAY_LESS])
    assert status == "error" and "max_length" in message
    status, result = server.join("caption_photo", [image, "Greedy", 3, 3, 20, SAY_LESS])
    assert status == "ok"


# ---- 2. memory bounded by design ---------------------------------------------------------------------

def test_sixteen_concurrent_huge_pngs_stay_within_the_memory_budget(server, huge_png):
    _assert_still_serving(server)
    image = server.upload(huge_png, "huge.png")
    assert server.call([image, 3, 3, 20, UNSURE])[0] == "ok"  # one first: what a single decode leaves behind is idle
    time.sleep(1)
    idle = server.rss()

    def attack(i: int) -> tuple[str, str]:
        headers = {"X-Forwarded-For": f"10.2.0.{i}"}  # sixteen clients (uvicorn trusts it from 127.0.0.1)
        return server.call([server.upload(huge_png, f"huge{i}.png", headers), 1, 1, 20 + i, UNSURE], headers=headers)

    with PeakRSS(server.ps) as memory, ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(attack, range(16)))
    for status, result in answers:
        assert (status == "ok" and result["caption"]) or (status == "error" and result), result
    assert sum(status == "ok" for status, _ in answers) >= 1
    growth = memory.peak - idle
    print(f"\n16 x 7000x7000 16-bit RGBA PNG: idle {idle / 2**20:.0f} MB, peak +{growth / 2**20:.0f} MB "
          f"(budget {MEMORY_BUDGET / 2**20:.0f} MB)")
    assert growth < MEMORY_BUDGET
    deadline = time.monotonic() + 30
    while server.rss() > idle * 1.1 and time.monotonic() < deadline:
        time.sleep(0.5)
    print(f"after: {server.rss() / 2**20:.0f} MB ({server.rss() / idle:.2f} x idle)")
    assert server.rss() <= idle * 1.1
    _assert_still_serving(server)


def test_word_heatmaps_of_huge_photos_stay_within_their_memory_budget(server, huge_jpeg, huge_png):
    """``/explain`` decodes a huge photo at reduced size, as captioning does, and makes its maps at the
    overlays' size (``app.OVERLAY_SIDE``), never at the photo's: a map of 47 megapixels would be 188 MB
    for each word."""
    _assert_still_serving(server)
    assert server.call([server.upload(EXAMPLE.read_bytes(), "coffee.jpg"), None, 3, 20], api="explain")[0] == "ok"
    images = {"8400 x 5600 JPEG": server.upload(huge_jpeg, "huge.jpg"), "7000 x 7000 16-bit RGBA PNG": server.upload(
        huge_png, "huge.png")}
    time.sleep(1)
    idle = server.rss()
    for name, image in images.items():
        with PeakRSS(server.ps) as memory:
            status, (data, overlays) = server.call([image, None, 3, 20], api="explain", output=None)
        assert status == "ok" and data["words"], data
        growth = memory.peak - idle
        print(f"\n/explain of a {name}: {len(data['words'])} words, idle {idle / 2**20:.0f} MB, peak "
              f"+{growth / 2**20:.0f} MB (budget {EXPLAIN_MEMORY_BUDGET / 2**20:.0f} MB)")
        assert growth < EXPLAIN_MEMORY_BUDGET
        assert [overlay["caption"] for overlay in overlays] == [word["word"] for word in data["words"]]
        response = httpx.get(overlays[0]["image"]["url"], timeout=60)
        response.raise_for_status()
        with Image.open(io.BytesIO(response.content)) as drawn:
            assert max(drawn.size) <= 1024 and drawn.format == "PNG"
    _assert_still_serving(server)


# ---- 3. fair queues ----------------------------------------------------------------------------------

def test_a_client_filling_the_batch_queue_does_not_hold_up_captions(server, huge_png):
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(6):
            zf.writestr(f"huge{i}.png", huge_png)
    archive = archive.getvalue()
    attackers = [{"X-Forwarded-For": f"10.3.0.{i}"} for i in range(4)]
    queued = []
    for headers in attackers:  # two batches each: the batch queue's share of the server is full
        for _ in range(2):
            status, session = server.join("caption_batch", [[server.upload(archive, "album.zip", headers)],
                                                            "Beam search", 3, 20, SAY_LESS], headers, wait=False)
            assert status == "queued", session
            queued.append(session)
    status, message = server.join("caption_batch", [[server.upload(archive, "album.zip", attackers[0])],
                                                    "Beam search", 3, 20, SAY_LESS], attackers[0], wait=False)
    assert status == "error" and "Too many requests" in message and "limit 2" in message
    status, message = server.join("caption_batch", [[server.upload(archive, "album.zip")], "Beam search", 3, 20, SAY_LESS],
                                  {"X-Forwarded-For": "10.3.0.99"}, wait=False)
    assert status == "error" and "busy" in message

    client = Client(server.url, verbose=False, headers={"X-Forwarded-For": "10.4.0.1"})
    started = time.monotonic()
    result = client.predict(handle_file(EXAMPLE), max_length=11, api_name="/caption")
    seconds = time.monotonic() - started
    waiting = httpx.get(f"{server.api}/queue/status", timeout=30).json()["queue_size"]
    print(f"\n/caption answered in {seconds:.1f} s with {waiting} batch jobs still waiting")
    assert result["caption"]
    assert waiting >= 5  # answered while the batches still queued, not after them


def _submit_at_once(server: Server, calls: list[list], headers: dict, api: str) -> list[tuple[str, object]]:
    """Send all ``calls`` from one client at the same moment (one thread each, released together),
    then read their answers: a limit checked before a request joins the queue must count requests
    that are joining at the same time."""
    start = threading.Barrier(len(calls))

    def submit(data: list) -> tuple[str, str]:
        start.wait()
        return server.submit(data, headers, api=api)

    with ThreadPoolExecutor(len(calls)) as pool:
        submitted = list(pool.map(submit, calls))
    return [server.answer(event_id, api) if status == "queued" else (status, event_id)
            for status, event_id in submitted]


def test_one_client_cannot_take_more_than_its_share_of_the_caption_queue(server, huge_png):
    """A client's share is less than the caption workers, so another client always finds one free."""
    share = SHARES["caption"].per_client
    assert share < CONCURRENCY["caption"]
    headers = {"X-Forwarded-For": "10.6.0.1"}
    image = server.upload(huge_png, "huge.png", headers)
    # slow images (seconds each): none is done before all have been let in or refused
    answers = _submit_at_once(server, [[image, 1, 1, 30 + i, UNSURE] for i in range(share + 4)], headers, "caption")
    refused = [message for status, message in answers if status == "error"]
    assert len(refused) == 4 and all("Too many requests" in message and f"limit {share}" in message
                                     for message in refused)
    assert sum(status == "ok" for status, _ in answers) == share
    status, result = server.call([image, 1, 1, 20, UNSURE], headers={"X-Forwarded-For": "10.6.0.2"})
    assert status == "ok" and result["caption"]


@pytest.mark.slow
def test_a_client_asking_one_caption_at_a_time_is_never_refused(server):
    """A request is counted from the moment it is let in until its handler starts; one that has
    finished is not counted, however fast it was."""
    headers = {"X-Forwarded-For": "10.6.0.3"}
    image = server.upload(EXAMPLE.read_bytes(), "coffee.jpg", headers)
    answers = [server.call([image, 1, 1, 8, UNSURE], headers=headers) for _ in range(24)]
    assert [status for status, _ in answers] == ["ok"] * 24, answers


def test_one_client_cannot_take_more_than_its_share_of_the_explain_queue(server, huge_png):
    """Heatmaps cost more than captions: one client gets fewer of them waiting or running than there
    are workers, then a message."""
    share = SHARES["explain"].per_client
    assert share < CONCURRENCY["explain"]
    headers = {"X-Forwarded-For": "10.7.0.1"}
    image = server.upload(huge_png, "huge.png", headers)
    answers = _submit_at_once(server, [[image, None, 1, 6 + i] for i in range(share + 4)], headers, "explain")
    refused = [message for status, message in answers if status == "error"]
    assert len(refused) == 4 and all("Too many requests" in message and f"limit {share}" in message
                                     for message in refused)
    assert sum(status == "ok" for status, _ in answers) == share
    status, result = server.call([image, None, 1, 6], headers={"X-Forwarded-For": "10.7.0.2"}, api="explain")
    assert status == "ok" and result["words"], result


# ---- unit checks of the guards -----------------------------------------------------------------------

def test_upload_source_accepts_only_files_inside_the_upload_folder(tmp_path):
    uploads = tmp_path / "uploads"
    (uploads / "abc").mkdir(parents=True)
    good = uploads / "abc" / "photo.jpg"
    good.write_bytes(b"x")
    (tmp_path / "outside.jpg").write_bytes(b"x")
    (uploads / "abc" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    assert upload_source({"path": str(good)}, uploads) == str(good.resolve())
    assert upload_source({"path": str(good), "meta": FILE_META}, uploads) == str(good.resolve())
    for path in (tmp_path / "outside.jpg", uploads / "abc" / ".." / ".." / "outside.jpg", uploads / "abc" / "link.jpg",
                 uploads, uploads / "abc", uploads / "missing.jpg", "relative.jpg", "/etc/passwd", "\x00"):
        with pytest.raises(InputRefused) as refused:
            upload_source({"path": str(path)}, uploads)
        assert str(refused.value) == REFUSED_PATH
    assert upload_source("data:image/png;base64,aGk=", uploads) == b"hi"
    with pytest.raises(InputRefused, match="too large"):
        upload_source("data:image/png;base64," + "A" * 2000, uploads, max_inline_bytes=1000)
    for payload in (None, 3, [], {}, {"url": "https://example.com/a.png"}):
        with pytest.raises(InputRefused):
            upload_source(payload, uploads)


@pytest.mark.slow
def test_batch_pixels_are_capped_per_request_and_per_zip_member(tiny_model_dir, tmp_path):
    from PIL import Image

    from captioner.core.inference import load_captioner
    from captioner.web.batch import caption_inputs, collect_inputs

    archive = tmp_path / "album.zip"
    photo = io.BytesIO()
    Image.new("RGB", (100, 100), "gray").save(photo, "PNG")
    bomb = io.BytesIO()
    Image.new("1", (9000, 9000)).save(bomb, "PNG")  # 81 megapixels in a few KB
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", bomb.getvalue())
        for i in range(3):
            zf.writestr(f"photo{i}.png", photo.getvalue())
    rows = caption_inputs(load_captioner(tiny_model_dir, "cpu"), collect_inputs([archive]), batch_size=2,
                          max_pixels=25_000)
    assert "image is too large" in rows[0].error  # the member's own cap, before decoding
    assert [row.error is None and row.score is not None for row in rows[1:]] == [True, True, False]
    assert "exceed 0.025 megapixels together" in rows[3].error and "another batch" in rows[3].error
