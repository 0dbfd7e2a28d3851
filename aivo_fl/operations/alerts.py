"""Alerts to a Slack-compatible webhook: what failed or was rejected, which round, which versions, where.

Delivery never holds up or fails the pipeline: each attempt has a short timeout, transient
failures (connection refused, timeouts, 429, 5xx) are retried a few times with exponential
backoff, and a message that still cannot be delivered is logged, not raised. The webhook URL may
carry a token (Slack puts it in the path), so only its scheme and host ever reach a log line.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

ATTEMPTS = 3
TIMEOUT_SECONDS = 5.0
BACKOFF_SECONDS = 1.0


@dataclass(frozen=True)
class Alert:
    """One message: a headline, the reason, and what it concerns."""

    title: str
    reason: str
    job: str | None = None
    run_id: str | None = None
    run_url: str | None = None
    round_id: str | None = None
    versions: Mapping[str, str] = field(default_factory=dict)

    def body(self) -> dict[str, object]:
        """Slack's incoming-webhook body (`text`) plus the same facts as structured fields."""
        facts = [f"*{self.title}*: {self.reason}"]
        if self.round_id:
            facts.append(f"round {self.round_id}")
        if self.versions:
            facts.append(", ".join(f"{k} {v}" for k, v in self.versions.items()))
        if self.run_url:
            facts.append(f"<{self.run_url}|open the run>")
        return {
            "text": " · ".join(facts),
            "title": self.title,
            "reason": self.reason,
            "job": self.job,
            "runId": self.run_id,
            "runUrl": self.run_url,
            "round": self.round_id,
            "versions": dict(self.versions),
        }


@dataclass(frozen=True)
class Delivery:
    delivered: bool
    attempts: int
    error: str | None = None


def masked(url: str) -> str:
    """The webhook as it may be logged: scheme and host only (the path or query may hold a token)."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or '?'}/***"


def _describe(exc: Exception) -> str:
    # Only the kind of failure: an exception's text can echo the URL, token included.
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, Exception):
        return type(exc.reason).__name__
    return type(exc).__name__


def _retryable(exc: Exception) -> bool:
    if isinstance(exc, urllib.error.HTTPError):
        return exc.code == 429 or exc.code >= 500
    return isinstance(exc, OSError)  # refused, reset, DNS, timeout (URLError and TimeoutError are OSErrors)


def send_alert(
    url: str,
    alert: Alert,
    *,
    attempts: int = ATTEMPTS,
    timeout: float = TIMEOUT_SECONDS,
    backoff: float = BACKOFF_SECONDS,
) -> Delivery:
    """POST the alert as JSON; retry transient failures; never raise for a delivery problem."""
    data = json.dumps(alert.body()).encode()
    error = "not attempted"
    for attempt in range(1, attempts + 1):
        request = urllib.request.Request(
            url, data=data, method="POST", headers={"Content-Type": "application/json", "User-Agent": "aivo-fl"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                response.read(1024)
            return Delivery(True, attempt)
        except Exception as exc:  # any failure to deliver is logged, never raised
            error = _describe(exc)
            log.warning("Alert to %s: attempt %d/%d failed (%s)", masked(url), attempt, attempts, error)
            if not _retryable(exc) or attempt == attempts:
                break
            time.sleep(backoff * 2 ** (attempt - 1))
    log.error("Alert '%s' not delivered to %s: %s", alert.title, masked(url), error)
    return Delivery(False, attempt, error)
