"""The caption service on Ray Serve, on a real local Ray cluster (2 CPUs, started once for this module
and always shut down), with the bundled model and real photos, driven over HTTP: shared forward
passes, the library's messages, the mounted page, and what one stranger's requests may cost (per-client
caps, the body budget, the time limit, a stuck replica replaced, memory handed back)."""

from __future__ import annotations

import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest

from tests.helpers.app import free_port
from tests.helpers.huge_png import write_rgba16_png
from tests.helpers.paths import EXAMPLES, ROOT
from tests.helpers.ray_cluster import ray_processes
from tests.serving.conftest import driver_env, running_service

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
PHOTOS = sorted(EXAMPLES.glob("*.jpg"))
MB = 1024 * 1024


def test_serve_settings_are_checked():
    pytest.importorskip("ray")
    from captioner.serving.ray_serve import build_app, decode_options

    with pytest.raises(ValueError, match="min_replicas"):
        build_app(min_replicas=3, max_replicas=2)
    with pytest.raises(ValueError, match="unknown setting 'replica'"):
        build_app(replica=2)
    with pytest.raises(ValueError, match="max_batch_size must be a number of at least 1"):
        build_app(max_batch_size=0)
    with pytest.raises(ValueError, match="unknown backend 'tvm'"):
        build_app(backend="tvm")
    with pytest.raises(ValueError, match="the onnx backend runs on the CPU"):
        build_app(backend="onnx", gpus_per_replica=1)
    with pytest.raises(ValueError, match="requests_per_client must be a number of at least 1"):
        build_app(requests_per_client=0)
    with pytest.raises(ValueError, match="body_budget_mb .* must hold at least one upload"):
        build_app(body_budget_mb=10, max_upload_mb=20)
    assert decode_options({"beam_size": "1", "length_penalty": "0.5"}).beam_size == 1
    with pytest.raises(Exception, match="unknown query parameter 'beam'"):
        decode_options({"beam": "2"})


# --- the main service: batching, messages, the page ----------------------------------------------

def test_concurrent_requests_share_forward_passes_and_get_their_own_captions(service):
    from captioner.core.inference import load_captioner

    chosen = (PHOTOS * 4)[:16]
    expected = [result.caption for result in load_captioner(None, backend="torch")(chosen)]
    assert len(set(expected)) > 3

    def ask(index: int) -> dict:
        data = chosen[index].read_bytes()
        if index % 2:  # half as raw bodies, half as multipart uploads
            return httpx.post(f"{service}/v1/caption", content=data, timeout=300).json()
        return httpx.post(f"{service}/v1/caption", files={"image": (chosen[index].name, data)}, timeout=300).json()

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(ask, range(16)))
    assert [answer.get("caption") for answer in answers] == expected
    assert set(answers[0]) == {"caption", "confidence", "calibrated", "candidates", "words", "top_classes", "model"}
    health = httpx.get(f"{service}/healthz", timeout=60).json()
    assert health["status"] == "ok" and health["requests"] >= 16 and health["backend"] == "torch"
    assert health["largest_batch"] > 1  # at least one forward pass served several requests


def test_bad_requests_get_the_librarys_message_and_the_next_one_succeeds(service, tmp_path):
    from captioner.core.errors import ImageError
    from captioner.core.images.decode import load_image

    good = PHOTOS[0].read_bytes()
    broken = {"notes.jpg": b"not a photo, just text\n", "truncated.jpg": good[:2000], "empty.png": b""}
    for name, data in broken.items():
        with pytest.raises(ImageError) as raised:
            load_image(data)
        answer = httpx.post(f"{service}/v1/caption", files={"image": (name, data)}, timeout=60)
        assert answer.status_code == 400, answer.text
        assert answer.json() == {"error": str(raised.value)}
    two = {"image": ("a.jpg", good), "file": ("b.jpg", good)}
    assert httpx.post(f"{service}/v1/caption", files=two, timeout=60).status_code == 400
    answer = httpx.post(f"{service}/v1/caption", files={"note": (None, "no file")}, timeout=60)
    assert answer.status_code == 400 and "no image was received" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption?beam_size=0", content=good, timeout=60)
    assert answer.status_code == 422 and "beam_size must be a whole number from 1 to 50" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption", content=b"\xff\xd8\xff" + bytes(3 * MB), timeout=60)
    assert answer.status_code == 413 and "limit 2.0 MB" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption", content=iter([good]), timeout=60)  # chunked: no length
    assert answer.status_code == 411 and "Content-Length" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption?beam_size=1&max_length=5", content=good, timeout=60)
    assert answer.status_code == 200
    assert len(answer.json()["candidates"]) == 1 and len(answer.json()["words"]) <= 5
    answer = httpx.post(f"{service}/v1/caption?when_unsure=maybe", content=good, timeout=60)
    assert answer.status_code == 422 and "when_unsure must be one of generalise, keep" in answer.json()["error"]
    answer = httpx.post(f"{service}/v1/caption?when_unsure=keep", content=good, timeout=60)
    assert answer.status_code == 200 and all(c["decoded"] == c["caption"] for c in answer.json()["candidates"])
    for answer in (httpx.post(f"{service}/v1/caption", content=b"", timeout=60),
                   httpx.post(f"{service}/v1/caption?max_length=x", content=good, timeout=60)):
        assert str(tmp_path.anchor) + "tmp" not in answer.text and "/work" not in answer.text  # no server paths


def test_the_mounted_gradio_app_loads_and_captions(service):
    from gradio_client import Client, handle_file

    from captioner.core.inference import load_captioner

    page = httpx.get(f"{service}/", timeout=60)
    assert page.status_code == 200 and "gradio" in page.text.lower()
    config = httpx.get(f"{service}/config", timeout=60).json()
    assert config["title"] == "Show and Tell: image captioner"
    client = Client(f"{service}/", verbose=False)
    result = client.predict(handle_file(str(PHOTOS[0])), 3, 3, None, api_name="/caption")
    assert result["caption"] == load_captioner(None, backend="torch")(PHOTOS[0]).caption


class PeakRSS:
    """The summed resident memory of ``processes``, sampled every 10 ms while in the ``with`` block."""

    def __init__(self, processes):
        self.processes, self.peak, self._stop = processes, 0, threading.Event()

    def __enter__(self) -> PeakRSS:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss(self.processes))
            time.sleep(0.01)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def rss(processes) -> int:
    return sum(process.memory_info().rss for process in processes)


def settled_rss(processes) -> int:
    """The median of five readings, 200 ms apart."""
    readings = []
    for _ in range(5):
        readings.append(rss(processes))
        time.sleep(0.2)
    return int(statistics.median(readings))


def test_memory_returns_to_idle_after_a_burst(service, tmp_path):
    """Bursts of worst-case requests (huge 16-bit PNGs, bodies at the upload cap, photos) from 48
    clients at once: afterwards the replica's resident memory is back within 10% of its idle, and
    Serve's proxy (Ray's code, run with the service's allocator settings) grows by at most 32 MB more
    on the second burst than on the first (its buffers stay after the first; measured 0-14 MB more)."""
    replicas, proxies = ray_processes("ServeReplica:captioner:"), ray_processes("ProxyActor")
    assert len(replicas) == 1 and len(proxies) == 1
    huge = write_rgba16_png(tmp_path / "huge.png").read_bytes()  # 7000 x 7000, about 600 KB
    junk = b"\xff\xd8\xff" + bytes(2 * MB - 10)  # at the upload cap: read whole, then refused as corrupt
    for body in [photo.read_bytes() for photo in PHOTOS] + [huge, junk]:  # warm: first uses allocate for good
        httpx.post(f"{service}/v1/caption", content=body, timeout=300)
    time.sleep(2)
    idle, proxy_idle = settled_rss(replicas), settled_rss(proxies)

    def attack(index: int) -> int:
        body = (huge, junk, PHOTOS[index % len(PHOTOS)].read_bytes())[index % 3]
        with _client(f"127.0.2.{index + 1}") as client:  # 48 clients: per-client caps do not apply
            return client.post(f"{service}/v1/caption", content=body, timeout=600).status_code

    after, proxy_after, peaks = [], [], []
    for _ in range(2):
        with PeakRSS(replicas) as peak, ThreadPoolExecutor(48) as pool:
            statuses = list(pool.map(attack, range(48)))
        assert statuses.count(200) == 32 and statuses.count(400) == 16, statuses
        time.sleep(3)
        after.append(settled_rss(replicas))
        proxy_after.append(settled_rss(proxies))
        peaks.append(peak.peak)
    rises = ", ".join(f"+{(p - idle) / MB:.0f}" for p in peaks)
    kept = ", ".join(f"{(a - idle) / idle:+.1%}" for a in after)
    proxy_kept = ", ".join(f"{(a - proxy_idle) / MB:+.0f} MB" for a in proxy_after)
    print(f"\nreplica RSS: idle {idle / MB:.0f} MB; peaks {rises} MB; after each burst {kept}. "
          f"Proxy: idle {proxy_idle / MB:.0f} MB, after each burst {proxy_kept}")
    assert max(after) <= idle * 1.10
    assert proxy_after[1] - proxy_after[0] <= 32 * MB


# --- limits: a second, small deployment --------------------------------------------------------

@pytest.fixture(scope="module")
def limited(service) -> str:
    """The REST API alone with small limits: 3 requests per client, 4 MB of bodies at once, uploads
    up to 2 MB, 15 s per request, model work over 4 s counted as stuck (checked every second)."""
    with running_service("limited", "/limited", max_batch_size=16, batch_wait_ms=500, max_upload_mb=2, ui=False,
                         backend="torch", cpus_per_replica=0.5, requests_per_client=3, body_budget_mb=4,
                         request_timeout_s=15, stuck_after_s=4, health_check_period_s=1) as prefix:
        yield service + prefix


def _held(url: str, length: int, source: str = "127.0.0.1", headers: str = "") -> socket.socket:
    """A request to ``url``/v1/caption that declares ``length`` body bytes and sends none."""
    target = httpx.URL(url)
    sock = socket.create_connection((target.host, target.port), source_address=(source, 0))
    sock.sendall(f"POST {target.path.rstrip('/')}/v1/caption HTTP/1.1\r\nHost: {target.host}\r\n"
                 f"Content-Type: image/jpeg\r\nContent-Length: {length}\r\n{headers}\r\n".encode())
    return sock


def _answer(sock: socket.socket, timeout: float = 60) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < 2:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def _client(source: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=source), timeout=120)


def test_one_client_gets_only_its_share_and_others_are_served(limited):
    held = [_held(limited, 1000) for _ in range(3)]  # this client's three requests in flight
    time.sleep(1)
    try:
        with _client("127.0.0.1") as me:
            refused = me.post(f"{limited}/v1/caption", content=PHOTOS[0].read_bytes())
        assert refused.status_code == 429 and "limit 3" in refused.json()["error"], refused.text
        with _client("127.0.0.2") as other:  # another address is served meanwhile
            answer = other.post(f"{limited}/v1/caption", content=PHOTOS[0].read_bytes())
        assert answer.status_code == 200 and answer.json()["caption"]
    finally:
        for sock in held:
            sock.close()


def test_bodies_in_flight_are_capped_by_the_budget(limited):
    held = [_held(limited, 2 * MB, source=f"127.0.0.{3 + i}") for i in range(2)]  # 4 MB: the whole budget
    time.sleep(1)
    try:
        with _client("127.0.0.9") as other:
            refused = other.post(f"{limited}/v1/caption", content=PHOTOS[0].read_bytes())
        assert refused.status_code == 503 and "too many images at once" in refused.json()["error"]
    finally:
        for sock in held:
            sock.close()
    time.sleep(1)
    with _client("127.0.0.9") as other:
        assert other.post(f"{limited}/v1/caption", content=PHOTOS[0].read_bytes()).status_code == 200


def test_a_request_that_never_finishes_sending_times_out(limited):
    # Serve's proxy lets a client lift its own time limit with this header; the replica's limit holds.
    sock = _held(limited, 1000, source="127.0.0.10", headers="x-request-timeout-seconds: 0\r\n")
    try:
        answer = _answer(sock, timeout=60)
    finally:
        sock.close()
    assert answer.startswith(b"HTTP/1.1 504"), answer[:200]
    assert b"longer than 15 s" in answer


def test_an_idle_connection_is_closed_by_the_proxy(service):
    host, port = service.split("//", 1)[1].split("/", 1)[0].split(":")
    sock = socket.create_connection((host, int(port)))
    sock.sendall(f"GET /healthz HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
    assert _answer(sock).startswith(b"HTTP/1.1 200")
    sock.settimeout(60)
    try:
        while sock.recv(65536):  # the rest of the answer, then the server's close
            pass
        closed = True
    except (TimeoutError, socket.timeout):
        closed = False
    finally:
        sock.close()
    assert closed  # after PROXY_KEEP_ALIVE_S, not held open


def test_a_stuck_replica_fails_its_health_check_and_is_replaced(limited):
    """Sixteen concurrent worst-case decodes (beam 50, 200 words) make one forward pass of many
    seconds (a pass of eight took 12.3 s on this project's CPU), past this deployment's 4 s limit for long
    enough that the health check fails three times in a row: Serve replaces the replica, and the new one
    serves the next request."""
    first = httpx.get(f"{limited}/healthz", timeout=60).json()["replica"]
    heavy = "beam_size=50&max_length=200"

    def ask(index: int) -> int:
        with _client(f"127.0.1.{index}") as client:
            try:
                return client.post(f"{limited}/v1/caption?{heavy}", content=PHOTOS[index % len(PHOTOS)].read_bytes()
                                   ).status_code
            except httpx.HTTPError:
                return 0  # the replica went away mid-request

    started = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(ask, range(16)))
    deadline = time.monotonic() + 180
    replica = first
    while replica == first and time.monotonic() < deadline:
        time.sleep(1)
        try:
            replica = httpx.get(f"{limited}/healthz", timeout=10).json()["replica"]
        except (httpx.HTTPError, ValueError):
            pass
    assert replica != first
    print(f"\nstuck replica replaced within {time.monotonic() - started:.0f} s of the heavy requests")
    with _client("127.0.0.11") as client:
        answer = client.post(f"{limited}/v1/caption", content=PHOTOS[0].read_bytes())
    assert answer.status_code == 200 and answer.json()["caption"]


def test_the_serve_command_serves_on_its_own_cluster_and_stops_cleanly(tmp_path):
    """``python -m captioner serve`` as a user runs it: its own local cluster, whose processes (Serve's
    proxy included) get the allocator settings; Ctrl-C stops it and leaves no Ray process behind."""
    from captioner.serving.ray_serve import ALLOCATOR_ENV

    port = free_port()
    env = {key: value for key, value in driver_env().items() if not key.startswith("MALLOC_")}
    server = subprocess.Popen([sys.executable, "-m", "captioner", "serve", "--no-ui", "--port", str(port),
                               "--backend", "torch", "--requests-per-client", "4"], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        for line in server.stdout:
            if line.startswith("serving on"):
                break
        assert server.poll() is None
        answer = httpx.post(f"http://127.0.0.1:{port}/v1/caption", content=PHOTOS[0].read_bytes(), timeout=300)
        assert answer.status_code == 200 and answer.json()["caption"]
        session = [p for p in psutil.process_iter(["pid"]) if _in_session(p.pid, server.pid)]
        proxy = next(p for p in session if " ".join(p.cmdline()).startswith("ray::ProxyActor"))
        environ = proxy.environ()
        assert all(environ.get(name) == value for name, value in ALLOCATOR_ENV.items())
        os.killpg(server.pid, signal.SIGINT)  # Ctrl-C in its terminal
        server.wait(timeout=180)
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
    time.sleep(2)
    left = [p.pid for p in psutil.process_iter(["pid", "status"])
            if _in_session(p.pid, server.pid) and p.info["status"] != psutil.STATUS_ZOMBIE]
    assert not left


def _in_session(pid: int, session: int) -> bool:
    try:
        return os.getsid(pid) == session
    except (ProcessLookupError, PermissionError):
        return False
