"""``serve`` attacked as a stranger would, over real HTTP: the Gradio page mounted in the Ray Serve
replica must read no file but the request's own upload, whichever way a path is sent and on every
event, and must stay responsive; error texts must not tell what a path is or where the server runs."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import httpx
import pytest

from captioner.web.guards import REFUSED_PATH
from captioner.web.handlers import SAY_LESS
from tests.helpers.gradio_http import FILE_META, GradioHTTP
from tests.helpers.paths import EXAMPLES

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
COFFEE = EXAMPLES / "coffee.jpg"


def _listing(folder: Path) -> set[str]:
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.fixture(scope="module")
def page(service) -> GradioHTTP:
    return GradioHTTP(service, timeout=60)


@pytest.fixture(scope="module")
def planted(upload_dir, tmp_path_factory) -> dict[str, str]:
    """Server paths in every form, among them things placed inside the upload folder that are not
    uploads: links out of it, a pipe, a socket, the folder itself."""
    outside = tmp_path_factory.mktemp("outside")
    secret = outside / "secret.jpg"
    secret.write_bytes(COFFEE.read_bytes())  # an image the server can read: it must never be captioned
    trap = upload_dir / "planted"
    trap.mkdir(exist_ok=True)
    (trap / "passwd.png").symlink_to("/etc/passwd")
    (trap / "secret.jpg").symlink_to(secret)
    (trap / "zero.png").symlink_to("/dev/zero")
    os.mkfifo(trap / "pipe.png")
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(trap / "socket.png"))
    relative = os.path.relpath("/etc/passwd", "/")
    return {
        "absolute": "/etc/passwd", "existing image": str(secret), "missing": str(outside / "no-such.png"),
        "directory": str(outside), "upload folder itself": str(upload_dir),
        "relative": relative, "dot-dot": "../../../../../../../etc/passwd",
        "escape from the upload folder": f"{upload_dir}/../{outside.name}/secret.jpg",
        "link to /etc/passwd": str(trap / "passwd.png"), "link out to an image": str(trap / "secret.jpg"),
        "link to /dev/zero": str(trap / "zero.png"), "named pipe": str(trap / "pipe.png"),
        "socket": str(trap / "socket.png"), "/proc": "/proc/self/environ", "/dev/zero": "/dev/zero",
        "file URL": "file:///etc/passwd", "URL-encoded": "%2Fetc%2Fpasswd",
        "URL-encoded file URL": "file:%2F%2F%2Fetc%2Fpasswd", "Gradio file route": "/gradio_api/file=/etc/passwd",
    }


def _forms(path: str) -> dict[str, object]:
    return {"meta": {"path": path, "meta": FILE_META}, "no meta": {"path": path},
            "meta and url": {"path": path, "url": f"/gradio_api/file={path}", "meta": FILE_META},
            "url only, meta": {"url": path, "meta": FILE_META}, "url only": {"url": path}, "bare string": path}


def _events(page: GradioHTTP, payload: object) -> dict[str, tuple[str, object]]:
    return {"caption": page.call([payload, 3, 3, 20, "generalise"]),
            "explain": page.call([payload, "", 3, 20], api="explain"),
            "page caption": page.join("caption_photo", [payload, "Beam search", 3, 3, 20, SAY_LESS]),
            "batch": page.join("caption_batch", [[payload], "Beam search", 3, 20, SAY_LESS])}


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs POSIX pipes")
def test_the_mounted_page_reads_no_server_file_on_any_event(page, planted, upload_dir):
    before = _listing(upload_dir)
    answers = {}
    for name, path in planted.items():
        for form, payload in _forms(path).items():
            for event, answer in _events(page, payload).items():
                answers[(name, form, event)] = answer
    assert all(status == "error" for status, _ in answers.values()), [
        key for key, (status, _) in answers.items() if status != "error"]
    messages = {str(message) for _, message in answers.values()}
    assert messages == {REFUSED_PATH}, messages  # one message: nothing about the path, no server folder
    assert _listing(upload_dir) == before  # nothing was copied into the upload folder
    status, outputs = page.call([page.upload(COFFEE.read_bytes(), "coffee.jpg"), 3, 3, 20, "generalise"])
    assert status == "ok" and outputs[0]["caption"], outputs


def test_the_mounted_page_serves_no_server_file(service):
    for path in ("/etc/passwd", "/proc/self/environ", "../../../../etc/passwd"):
        answer = httpx.get(f"{service}/gradio_api/file={path}", timeout=30)
        assert answer.status_code in (400, 403, 404), (path, answer.status_code)
        assert "root:" not in answer.text


def test_an_upload_is_captioned_on_every_event(page):
    upload = page.upload(COFFEE.read_bytes(), "coffee.jpg")
    answers = _events(page, upload)
    assert all(status == "ok" for status, _ in answers.values()), answers
    assert answers["caption"][1][0]["caption"] == answers["explain"][1][0]["caption"]
