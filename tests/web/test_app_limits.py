"""The public app's limits on explanations, file names, memory, connections and fairness, attacked
over real HTTP and raw sockets against the real ``python app.py`` (``tests.helpers.app_process``).

SECURITY.md's figures for these promises come from the ``print`` lines of these tests.
"""

from __future__ import annotations

import base64
import io
import resource
import socket
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from PIL import Image

from captioner.web.guards import REFUSED_PATH, folder_bytes
from captioner.web.handlers import MAX_EXPLAINED_WORDS, SAY_LESS
from captioner.web.server import HEAD_TIMEOUT_S, MAX_CONNECTIONS_PER_PEER
from tests.helpers.app import make_app_model
from tests.helpers.app_process import FILE_META, PeakRSS, Server, poll
from tests.helpers.huge_png import write_rgba16_png
from tests.helpers.paths import ROOT

EXAMPLE = ROOT / "examples" / "coffee.jpg"
UNSURE = "generalise"  # the caption API's when_unsure input (the page's is handlers.SAY_LESS)
pytestmark = [pytest.mark.timeout(900), pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_app_model(tmp_path_factory.getbasetemp() / "app-model")


@pytest.fixture(scope="module")
def server(model, tmp_path_factory):
    running = Server(model, tmp_path_factory.mktemp("limits"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory) -> bytes:
    """7000 x 7000 pixels of 16-bit RGBA (49 megapixels) in about 600 KB."""
    return write_rgba16_png(tmp_path_factory.mktemp("png") / "huge.png").read_bytes()


def data_url(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, "JPEG", quality=90)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


def still_serving(server: Server, headers: dict | None = None) -> None:
    status, result = server.call([server.upload(EXAMPLE.read_bytes(), "coffee.jpg", headers), 3, 3, 20, UNSURE],
                                 headers=headers)
    assert status == "ok" and result["caption"], result


def log_text(server: Server) -> str:
    return server.log_path.read_text(errors="replace")


# ---- E. explanations: bounded in words, written once, named by index ----------------------------------

@pytest.mark.slow
def test_a_caption_over_the_word_cap_is_refused_before_any_work(server):
    """The attack of the report: a 198-word caption on a 1023 x 1023 photo sent as a data: URL. It is
    refused with a message naming the cap, before the photo is decoded; nothing is written."""
    with Image.open(EXAMPLE) as photo:
        inline = data_url(photo.resize((1023, 1023)))
    written = folder_bytes(server.results_dir())
    started = time.monotonic()
    status, message = server.call([{"url": inline}, " ".join(["cup"] * 198), 3, 20], api="explain")
    print(f"\n198-word caption refused in {time.monotonic() - started:.2f} s: {message}")
    assert status == "error" and f"at most {MAX_EXPLAINED_WORDS} words" in message
    status, message = server.call([{"url": inline}, None, 3, MAX_EXPLAINED_WORDS + 1], api="explain")
    assert status == "error" and "max_length" in message and str(MAX_EXPLAINED_WORDS) in message
    assert folder_bytes(server.results_dir()) == written
    status, (data, overlays) = server.call([{"url": inline}, "a cup of coffee", 3, 20], api="explain", output=None)
    assert status == "ok" and len(overlays) == 4 == len(data["words"])


@pytest.mark.slow
def test_overlays_are_written_once_named_by_index_and_served_from_the_apps_folder(server):
    """Gradio copies returned files into its cache unless they lie in a static path: the overlays lie
    in the app's own folder only, and their names carry no word of the caption."""
    word = "x" * 300  # a file name of 244 bytes or more is too long for the file system
    image = server.upload(EXAMPLE.read_bytes(), "coffee.jpg")
    status, (data, overlays) = server.call([image, f"a {word} cup", 1, 20], api="explain", output=None)
    assert status == "ok", data
    assert [w["word"] for w in data["words"]] == ["a", word, "cup"]
    names = [Path(overlay["image"]["path"]).name for overlay in overlays]
    assert names == ["word.01.png", "word.02.png", "word.03.png"]
    for overlay in overlays:
        path = Path(overlay["image"]["path"])
        assert path.is_relative_to(server.results_dir())
        response = httpx.get(overlay["image"]["url"], timeout=60)
        assert response.status_code == 200 and response.content == path.read_bytes()
    assert not list(server.upload_dir.rglob("word.*.png"))  # no second copy in Gradio's cache
    assert word not in log_text(server)


def test_a_huge_caption_is_refused_and_the_log_stays_small(server):
    """A 13 MiB word: refused with a message at once; the log grows by no more than a few lines."""
    image = server.upload(EXAMPLE.read_bytes(), "coffee.jpg")
    before = server.log_path.stat().st_size
    status, message = server.call([image, "a " + "y" * (13 * 2**20) + " cup", 1, 20], api="explain")
    assert status == "error" and "too long to explain" in message
    assert server.log_path.stat().st_size - before < 4096
    assert "Traceback" not in log_text(server)
    still_serving(server)


# ---- F. every failure has a message; no traceback with request data in the log --------------------

def test_the_example_gallery_answers_bad_indices_with_a_message(server):
    for index in (999, -1, "abc", None, 2.5):
        status, message = server.join("show_example", [index])
        assert status == "error" and message and "example must be a whole number" in message, (index, message)
        response = httpx.post(f"{server.api}/run/predict", timeout=60, json={
            "data": [index], "fn_index": server.fn["show_example"], "session_hash": "x", "event_data": None,
            "trigger_id": None})
        assert "example must be a whole number" in response.json()["error"]
    status, [photo] = server.join("show_example", [0])
    assert status == "ok" and Path(photo["path"]).is_relative_to(server.upload_dir)
    assert "Traceback" not in log_text(server)


def test_every_refusal_of_every_event_has_a_message_never_null(server):
    image = server.upload(EXAMPLE.read_bytes(), "coffee.jpg")
    cases = {"caption": [[image, 3, 3, {"x": 1}, UNSURE], [image, "three", 3, 20, UNSURE], [[1, 2], 3, 3, 20, UNSURE],
                         [image, 3, 3, 20, "maybe"], [image, 3, 3]],
             "explain": [[image, 5, 3, 20], [image, ["a", "b"], 3, 20], [None, "", 3, 20], [image, "?!", 3, 20]]}
    for api, calls in cases.items():
        for data in calls:
            status, message = server.call(data, api=api)
            assert status == "error" and isinstance(message, str) and message, (api, data, message)
    for fn, data in {"caption_photo": [image, "Beam search", 3, 3, "x", SAY_LESS],
                     "caption_batch": [[image], "Greedy", 3, -1, SAY_LESS], "show_example": ["x"]}.items():
        status, message = server.join(fn, data)
        assert status == "error" and isinstance(message, str) and message, (fn, data, message)
    assert "Traceback" not in log_text(server)
    still_serving(server)


# ---- I. paths never shown, connections bounded, fair shares -------------------------------------------

def test_a_relative_path_is_refused_without_showing_the_servers_folder(server):
    folder = str(server.folder)
    for payload in ({"path": "relative.png", "meta": FILE_META}, {"path": "relative.png"},
                    {"path": "../gradio/x.png", "meta": FILE_META}, {"path": "~/x.png", "meta": FILE_META}):
        for route, (status, message) in [("call", server.call([payload, 3, 3, 20, UNSURE])),
                                         ("explain", server.call([payload, "", 3, 20], api="explain")),
                                         ("page", server.join("caption_photo", [payload, "Greedy", 3, 3, 20, SAY_LESS])),
                                         ("batch", server.join("caption_batch", [[payload], "Greedy", 3, 20, SAY_LESS]))]:
            assert status == "error" and message == REFUSED_PATH, (payload, route, message)
            assert folder not in message and str(server.upload_dir) not in message
    for resolved in (f"{folder}/relative.png", f"{folder}/x.png", f"{server.folder.parent}/gradio/x.png"):
        assert resolved not in log_text(server)  # the working folder is never named, not even in the log


def open_idle_connections(port: int, count: int, source: str, head: bytes = b"") -> list[socket.socket]:
    """``count`` connections from ``source`` (an address of the loopback range) that send ``head``
    (part of a request, or nothing) and then nothing more."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", port))
        if head:
            sock.sendall(head)
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)


@pytest.mark.stress
def test_connections_without_a_request_head_are_capped_per_address_and_cut_off(server):
    """One address opens more connections than its cap, half sending nothing, half a request head that
    never ends: those over the cap are closed at once, the rest after the head timeout; meanwhile and
    afterwards another address is served."""
    files_before = server.ps.num_fds()
    extra = 40
    held = open_idle_connections(server.port, (MAX_CONNECTIONS_PER_PEER + extra) // 2, "127.0.0.2") + \
        open_idle_connections(server.port, (MAX_CONNECTIONS_PER_PEER + extra) // 2, "127.0.0.2",
                              b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    try:
        time.sleep(1)
        at_once = sum(closed_by_server(sock) for sock in held)
        peak_files = server.ps.num_fds()
        still_serving(server)  # from 127.0.0.1, while they are held
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 20
        while not all(closed_by_server(sock) for sock in held) and time.monotonic() < deadline:
            time.sleep(0.5)
        after = sum(closed_by_server(sock) for sock in held)
    finally:
        for sock in held:
            sock.close()
    print(f"\n{len(held)} idle connections from one address: {at_once} closed at once (cap "
          f"{MAX_CONNECTIONS_PER_PEER}), all {after} closed by the server within {HEAD_TIMEOUT_S:.0f} s + 20 s; "
          f"app's open files {files_before} -> {peak_files}")
    assert at_once >= extra and after == len(held)
    assert peak_files <= files_before + MAX_CONNECTIONS_PER_PEER + 16
    still_serving(server)


@pytest.mark.stress
@pytest.mark.slow
def test_floods_of_all_kinds_from_one_client_leave_another_client_served_and_memory_returns(server, huge_png):
    """One client sends its whole share of captions, explanations and batch jobs at once, each on huge
    images. Another client's caption is answered while that flood is still being worked through; once it
    is over, the app's memory goes back to within 10% of what it held idle."""
    attacker = {"X-Forwarded-For": "10.9.0.1"}
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(4):
            zf.writestr(f"huge{i}.png", huge_png)
    huge = server.upload(huge_png, "huge.png", attacker)
    album = server.upload(archive.getvalue(), "album.zip", attacker)
    # one of each first, on the huge image: what a first use leaves behind belongs to idle
    assert server.call([huge, 1, 1, 9, UNSURE], headers=attacker)[0] == "ok"
    assert server.call([huge, None, 1, 5], headers=attacker, api="explain")[0] == "ok"
    assert server.join("caption_batch", [[album], "Greedy", 3, 9, SAY_LESS], attacker)[0] == "ok"
    victim = {"X-Forwarded-For": "10.9.0.2"}
    photo = server.upload(EXAMPLE.read_bytes(), "coffee.jpg", victim)
    started = time.monotonic()
    assert server.call([photo, 3, 3, 12, UNSURE], headers=victim)[0] == "ok"  # not remembered: the model runs
    alone = time.monotonic() - started
    time.sleep(1)
    idle = server.rss()

    pending = {"n": 0}
    lock = threading.Lock()

    def attack(job) -> tuple[str, object]:
        kind, data = job
        with lock:
            pending["n"] += 1
        try:
            if kind == "batch":
                return server.join("caption_batch", data, attacker)
            return server.call(data, headers=attacker, api=kind)
        finally:
            with lock:
                pending["n"] -= 1

    jobs = [("caption", [huge, 1, 1, 30 + i, UNSURE]) for i in range(16)] + \
        [("explain", [huge, None, 1, 6 + i]) for i in range(4)] + \
        [("batch", [[album], "Greedy", 3, 20 + i, SAY_LESS]) for i in range(2)]
    with PeakRSS(server.ps) as memory, ThreadPoolExecutor(len(jobs)) as pool:
        answers = pool.map(attack, jobs)
        time.sleep(3)  # the flood is queued and running
        started = time.monotonic()
        status, result = server.call([photo, 3, 3, 11, UNSURE], headers=victim)
        seconds, still_pending = time.monotonic() - started, pending["n"]
        answers = list(answers)
    assert status == "ok" and result["caption"]
    for status_, answer in answers:
        assert (status_ == "ok") or (status_ == "error" and isinstance(answer, str) and answer), answer
    recovered = poll(server.rss, lambda rss: rss <= idle * 1.1, timeout_s=60)
    print(f"\nflood of 16 captions, 4 explains and 2 batches (4 x 49 MP each) from one client: another client's "
          f"caption answered in {seconds:.1f} s ({alone:.1f} s before the flood) with {still_pending} of the flood's "
          f"{len(jobs)} requests still "
          f"pending; memory idle {idle / 2**20:.0f} MB, peak +{(memory.peak - idle) / 2**20:.0f} MB, "
          f"after {recovered / 2**20:.0f} MB ({recovered / idle:.2f} x idle)")
    assert still_pending > 0  # answered before the flood was worked through, not after it
    assert recovered <= idle * 1.1


# ---- a server with small caps, to reach them: disk for results, open files ---------------------------

OUTPUT_CAP_MB = 12
FILE_LIMIT = 1024


@pytest.fixture(scope="module")
def small_server(model, tmp_path_factory):
    """``python app.py`` with a 12 MB folder for results and a limit of 1024 open files."""
    running = Server(model, tmp_path_factory.mktemp("small"), CAPTIONER_OUTPUT_MB=str(OUTPUT_CAP_MB),
                     preexec=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (FILE_LIMIT, FILE_LIMIT)))
    yield running
    running.close()


@pytest.mark.stress
@pytest.mark.slow
def test_concurrent_explains_never_take_the_results_folder_over_its_cap(small_server):
    """Eight clients ask for the heatmaps of 20-word captions at once (about 4 MB of overlays each,
    32 MB together, against a 12 MB cap): the folder, read every 20 ms, never holds more than the cap;
    every answer is overlays or a message; the next request is answered."""
    server = small_server
    caption = " ".join(["a", "cup", "of", "coffee", "on", "a", "table", "with", "a", "spoon"] * 2)
    stop, peak = threading.Event(), [0]

    def watch() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], folder_bytes(server.results_dir()))
            time.sleep(0.02)

    def explain(i: int) -> tuple[str, object]:
        headers = {"X-Forwarded-For": f"10.8.0.{i}"}
        return server.call([server.upload(EXAMPLE.read_bytes(), f"c{i}.jpg", headers), caption, 1, 20],
                           headers=headers, api="explain", output=None)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(explain, range(8)))
    finally:
        stop.set()
        watcher.join()
    done = [answer for status, answer in answers if status == "ok"]
    refused = [answer for status, answer in answers if status == "error"]
    print(f"\n8 concurrent explains of 20 words: {len(done)} answered, {len(refused)} refused; results folder "
          f"peak {peak[0] / 2**20:.1f} MB (cap {OUTPUT_CAP_MB} MB)")
    assert done and all(len(overlays) == 20 for _, overlays in done)
    assert all(isinstance(message, str) and message for message in refused)
    assert peak[0] <= OUTPUT_CAP_MB * 2**20
    assert not list(server.upload_dir.rglob("word.*.png"))
    status, (data, overlays) = server.call([server.upload(EXAMPLE.read_bytes(), "c.jpg"), "a cup", 1, 20],
                                           api="explain", output=None)
    assert status == "ok" and len(overlays) == 2 == len(data["words"])


@pytest.mark.stress
@pytest.mark.slow
def test_open_connections_stay_under_the_open_file_limit(small_server):
    """Connections from many addresses, none over its own cap, together more than the process may open:
    those over the total cap are closed at once, the process never runs out of files, and once the
    idle ones are cut off other clients are served again."""
    server = small_server
    peers = [f"127.0.1.{i}" for i in range(1, 6)]
    held = [sock for peer in peers for sock in open_idle_connections(server.port, 200, peer)]
    try:
        time.sleep(1)
        at_once = sum(closed_by_server(sock) for sock in held)
        files = server.ps.num_fds()
        deadline = time.monotonic() + HEAD_TIMEOUT_S + 20
        while not all(closed_by_server(sock) for sock in held) and time.monotonic() < deadline:
            time.sleep(0.5)
    finally:
        for sock in held:
            sock.close()
    print(f"\n1000 idle connections from 5 addresses with {FILE_LIMIT} open files allowed: {at_once} closed at "
          f"once, {files} files open at the peak")
    assert at_once > 0 and files < FILE_LIMIT
    still_serving(server)
    assert server.process.poll() is None
