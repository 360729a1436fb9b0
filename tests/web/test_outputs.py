"""The app's folder for results (overlays, batch downloads): counted before writing, never over its
cap, even with many requests writing at once; old requests' files give way; Gradio serves it as is."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from captioner.web.guards import folder_bytes
from captioner.web.outputs import OutputFolder, OutputsFull


def test_older_requests_give_way_and_a_file_that_cannot_fit_is_refused():
    outputs = OutputFolder(max_bytes=10_000)
    try:
        first, second, third = (outputs.new_request() for _ in range(3))
        outputs.write(first, "word.01.png", b"x" * 4000)
        outputs.write(second, "word.01.png", b"x" * 4000)
        outputs.write(third, "word.01.png", b"x" * 4000)  # the oldest request's folder is removed first
        assert not first.exists() and (second / "word.01.png").is_file() and (third / "word.01.png").is_file()
        assert outputs.used == 8000 == folder_bytes(outputs.root)
        with pytest.raises(OutputsFull, match="full"):
            outputs.write(third, "word.02.png", b"x" * 7000)  # its own 4000 + 7000: over the cap however pruned
        assert not (third / "word.02.png").exists() and folder_bytes(outputs.root) <= 10_000
        with pytest.raises(OutputsFull, match="busy"):  # a request whose folder gave way is told so
            outputs.write(first, "word.02.png", b"x")
        with pytest.raises(ValueError):
            outputs.write(third, "../escape.png", b"x")
    finally:
        outputs.close()
    assert not outputs.root.exists()


def test_expired_requests_are_removed():
    outputs = OutputFolder(max_bytes=10_000, max_age_s=0.05)
    try:
        old = outputs.new_request()
        outputs.write(old, "a.csv", b"x")
        time.sleep(0.1)
        outputs.write(outputs.new_request(), "b.csv", b"x")
        assert not old.exists()
    finally:
        outputs.close()


def test_concurrent_writers_never_take_the_folder_over_its_cap():
    """Eight requests write fifty 1 KB files each at once into a 20 KB folder; the folder's size, read
    from the disk every millisecond, never passes the cap. Each reading holds the folder's lock: a walk
    of the disk that a removal and a write cross would count a file removed before another was written."""
    cap = 20_000
    outputs = OutputFolder(max_bytes=cap)
    stop, peak = threading.Event(), [0]

    def watch() -> None:
        while not stop.is_set():
            with outputs._lock:
                peak[0] = max(peak[0], folder_bytes(outputs.root))
            time.sleep(0.001)

    def request(_: int) -> int:
        folder, written = outputs.new_request(), 0
        for number in range(50):
            try:
                outputs.write(folder, f"word.{number:02d}.png", b"x" * 1000)
                written += 1
            except OutputsFull:
                folder = outputs.new_request()  # flooded: this request's files gave way to newer ones
        return written

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        with ThreadPoolExecutor(8) as pool:
            written = sum(pool.map(request, range(8)))
    finally:
        stop.set()
        watcher.join()
        final = folder_bytes(outputs.root)
        outputs.close()
    assert written > 20 and peak[0] <= cap and final <= cap, (written, peak[0], final)


@pytest.mark.parametrize("raw", ["0", "-3", "2.5", "many"])
def test_a_bad_cap_in_the_environment_is_refused_with_its_name(monkeypatch, raw):
    monkeypatch.setenv("CAPTIONER_OUTPUT_MB", raw)
    with pytest.raises(ValueError, match=f"CAPTIONER_OUTPUT_MB must be a whole number of at least 1, got '{raw}'"):
        OutputFolder()


def test_the_cap_in_the_environment_is_in_megabytes(monkeypatch):
    monkeypatch.setenv("CAPTIONER_OUTPUT_MB", " 3 ")
    outputs = OutputFolder()
    try:
        assert outputs.max_bytes == 3 * 1024 * 1024
    finally:
        outputs.close()
