"""Alert delivery against real HTTP receivers on 127.0.0.1: healthy, flaky, slow, refusing, down."""

from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from aivo_fl.operations.alerts import Alert, masked, send_alert

ALERT = Alert(
    title="Aggregation round rejected",
    reason="Performance degradation: held-out accuracy 71.20% -> 65.10%",
    job="federated_aggregation",
    run_id="abc123",
    run_url="http://127.0.0.1:3000/runs/abc123",
    round_id="fu-0007",
    versions={"base": "1.2.0", "candidate": "1.3.0"},
)


@contextmanager
def receiver(statuses: list[int], delay: float = 0.0) -> Iterator[tuple[str, list[dict[str, object]]]]:
    """A webhook on 127.0.0.1 answering with `statuses` in turn (the last one repeats)."""
    received: list[dict[str, object]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            time.sleep(delay)
            status = statuses[min(len(received), len(statuses)) - 1]
            self.send_response(status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/services/T000/B000/secret-token", received
    finally:
        server.shutdown()
        server.server_close()


def down_url() -> str:
    """A port nothing listens on: connections are refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/services/T000/B000/secret-token"


def test_delivers_a_slack_compatible_body_with_the_facts() -> None:
    with receiver([200]) as (url, received):
        delivery = send_alert(url, ALERT)
    assert (delivery.delivered, delivery.attempts) == (True, 1)
    [body] = received
    assert body["text"].startswith("*Aggregation round rejected*: Performance degradation")
    assert "round fu-0007" in body["text"] and "<http://127.0.0.1:3000/runs/abc123|open the run>" in body["text"]
    assert body["versions"] == {"base": "1.2.0", "candidate": "1.3.0"}
    assert (body["round"], body["runUrl"], body["job"]) == ("fu-0007", ALERT.run_url, "federated_aggregation")


def test_a_500_is_retried_and_the_second_attempt_delivers() -> None:
    with receiver([500, 200]) as (url, received):
        delivery = send_alert(url, ALERT, backoff=0.01)
    assert (delivery.delivered, delivery.attempts) == (True, 2)
    assert len(received) == 2 and received[0] == received[1]


def test_a_client_error_is_not_retried() -> None:
    with receiver([404]) as (url, received):
        delivery = send_alert(url, ALERT, backoff=0.01)
    assert (delivery.delivered, delivery.attempts, delivery.error) == (False, 1, "HTTP 404")
    assert len(received) == 1


def test_a_receiver_that_is_down_is_logged_without_the_token_and_never_raises(
    caplog: pytest.LogCaptureFixture,
) -> None:
    url = down_url()
    caplog.set_level(logging.WARNING, logger="aivo_fl.operations.alerts")
    started = time.perf_counter()
    delivery = send_alert(url, ALERT, attempts=3, backoff=0.05)
    elapsed = time.perf_counter() - started
    assert (delivery.delivered, delivery.attempts, delivery.error) == (False, 3, "ConnectionRefusedError")
    assert elapsed >= 0.05 + 0.1  # backed off between attempts
    assert [r.levelname for r in caplog.records] == ["WARNING", "WARNING", "WARNING", "ERROR"]
    assert "secret-token" not in caplog.text and "T000" not in caplog.text
    assert "http://127.0.0.1/***" in caplog.text


def test_a_receiver_that_hangs_costs_at_most_the_timeouts() -> None:
    with receiver([200], delay=2.0) as (url, _):
        started = time.perf_counter()
        delivery = send_alert(url, ALERT, attempts=2, timeout=0.2, backoff=0.01)
        elapsed = time.perf_counter() - started
    assert (delivery.delivered, delivery.attempts) == (False, 2)
    assert elapsed < 1.5


def test_masked_keeps_only_scheme_and_host() -> None:
    assert masked("https://hooks.slack.com/services/T1/B2/XyZ?token=1") == "https://hooks.slack.com/***"
