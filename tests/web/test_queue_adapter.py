"""The one place that reads Gradio's queue (``guards.queued_events``), against a real Gradio queue: it
sees the events waiting and running under a concurrency id, and fails loudly when the queue is not
shaped as it expects (a Gradio upgrade that moved it)."""

from __future__ import annotations

import threading
import time

import gradio as gr
import pytest
from gradio_client import Client

from captioner.web.guards import GradioChanged, QueueShares, queued_events
from tests.helpers.app import free_port

pytestmark = [pytest.mark.filterwarnings("ignore:.*no_silent_downcasting"),  # inside Gradio 6.31, with pandas 3
              pytest.mark.filterwarnings("ignore:The copy keyword is deprecated")]


def test_queued_events_sees_waiting_and_running_events_of_a_real_queue():
    release = threading.Event()

    def slow(text: str) -> str:
        release.wait(60)
        return text

    with gr.Blocks() as demo:
        box = gr.Textbox()
        out = gr.Textbox()
        box.submit(slow, box, out, api_name="slow", concurrency_limit=1, concurrency_id="slow")
    demo.queue()
    demo.launch(server_name="127.0.0.1", server_port=free_port(), prevent_thread_lock=True, quiet=True)
    try:
        client = Client(demo.local_url, verbose=False)
        jobs = [client.submit(f"job {i}", api_name="/slow") for i in range(3)]
        deadline = time.monotonic() + 60
        while len(queued_events(demo, "slow")) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        events = queued_events(demo, "slow")
        assert len(events) == 3  # one running, two waiting
        assert all(event.concurrency_id == "slow" for event in events) and queued_events(demo, "other") == []
        assert all(event.request is not None for event in events)  # the shares read each client's address
        release.set()
        assert [job.result(timeout=60) for job in jobs] == ["job 0", "job 1", "job 2"]
    finally:
        release.set()
        demo.close()


def test_a_queue_of_another_shape_is_named_not_ignored():
    class Moved:
        _queue = object()  # no event_queue_per_concurrency_id, no active_jobs

    with pytest.raises(GradioChanged, match="Gradio's queue has changed"):
        queued_events(Moved(), "caption")
    shares = QueueShares()
    shares.watch(Moved())
    with pytest.raises(GradioChanged):
        shares.admit("caption", None, 16)
