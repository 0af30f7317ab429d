"""Webhook payloads, signatures and one delivery attempt (the durable retry loop lives in the job
worker, which records every attempt; this module gives it the building blocks).

Payload (the JSON body of the POST), one per event, `job_completed` or `job_failed`::

    {"event": "job_completed", "job_id": "<uuid4>", "results": [...], "signature": "<hex>"}

`results` is the job's results (a list: `[{output_url, media_type}]` for `job_completed`,
`[{error}]` for `job_failed`). Other top-level
keys may follow (e.g. `"error": {...}` on `job_failed`); receivers should ignore keys they do not
know. Without a `webhook_secret` the payload keeps its shape with `"signature": null`, and the
`X-Webhook-Signature` header is absent: such a delivery is unauthenticated.

Signatures (both are lowercase hex HMAC-SHA256 keyed with the job's `webhook_secret`, UTF-8):

1. Body field `signature`: over the canonical JSON of the payload WITHOUT its `signature` key::

       canonical = json.dumps(payload_without_signature, sort_keys=True,
                              separators=(",", ":"), ensure_ascii=False).encode("utf-8")
       signature = hmac.new(secret.encode(), canonical, hashlib.sha256).hexdigest()

   Receivers outside Python must reproduce that serialisation exactly (sorted keys, no spaces,
   raw UTF-8 rather than \\u escapes, Python's float formatting), which is why the header
   signature below is the one to prefer. It carries no timestamp, so on its own it does not stop
   a captured delivery from being replayed.

2. Header `X-Webhook-Signature: sha256=<hex>`: over the EXACT raw request body bytes, prefixed
   with the `X-Webhook-Timestamp` header value (unix seconds) and a dot::

       signed = f"{timestamp}.".encode() + raw_body
       expected = "sha256=" + hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()

   Binding the timestamp in stops replays: receivers compare in constant time
   (`hmac.compare_digest`) and reject timestamps more than a few minutes (we suggest 300 s) from
   their clock. `verify_header_signature` does both.

Other headers: `X-Webhook-Event` (the event), `X-Webhook-Id` (the delivery id: the same on every
retry of one delivery, so receivers can drop duplicates), `X-Webhook-Timestamp`,
`Content-Type: application/json`, `User-Agent: bgremove-webhook/1`. Each attempt is signed afresh
with its own timestamp. The raw body we send is the canonical JSON of the whole payload (the
`signature` key included).

Delivery: one POST under the same SSRF rules as `image_url` fetching (`pipelines.fetch`):
http/https only, every resolved address public unless the operator allows its network, the
connection pinned to the validated IP; redirects are never followed. 2xx is success; 408, 429,
5xx, timeouts, connection failures and unresolvable hosts are worth retrying; 3xx, other 4xx and
refused URLs are not.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import random
import time
from dataclasses import dataclass

import httpx

from pipelines.errors import FetchError
from pipelines.fetch import FetchPolicy, post_json

log = logging.getLogger(__name__)

EVENTS = frozenset({"job_completed", "job_failed"})
MAX_ATTEMPTS = 6  # first try plus five retries
SIGNATURE_HEADER = "X-Webhook-Signature"
EVENT_HEADER = "X-Webhook-Event"
ID_HEADER = "X-Webhook-Id"
TIMESTAMP_HEADER = "X-Webhook-Timestamp"
USER_AGENT = "bgremove-webhook/1"
DEFAULT_TOLERANCE_S = 300.0
RETRYABLE_STATUSES = frozenset({408, 429})
# FetchError reasons that are about the network, not the URL: worth another attempt.
RETRYABLE_REASONS = frozenset({"timeout", "unreachable", "unresolvable"})


@dataclass(frozen=True)
class DeliveryResult:
    ok: bool
    status_code: int | None  # None when no HTTP response came back
    error: str | None  # None when ok; a one-line reason otherwise (never the response body)
    duration_ms: int
    retryable: bool  # False when ok


def _canonical(payload: dict) -> bytes:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False).encode("utf-8")


def _hmac_hex(secret: str, data: bytes) -> str:
    return hmac.new(secret.encode("utf-8"), data, hashlib.sha256).hexdigest()


def _equal(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode("utf-8"), b.encode("utf-8"))


def canonical_body(payload: dict) -> bytes:
    """The canonical JSON bytes of `payload`: what `deliver` sends as the request body."""
    return _canonical(payload)


def build_payload(event: str, job_id: str, results: list | dict | None, secret: str | None,
                  **extra) -> dict:
    """The webhook payload for `event`, its `signature` set (None without a secret).

    `extra` adds top-level keys (e.g. error={"code": ..., "message": ...} for job_failed); an
    empty secret counts as none. Raises ValueError for an unknown event or an `extra` key named
    "signature", and TypeError/ValueError for values JSON cannot encode (or NaN/inf).
    """
    if event not in EVENTS:
        raise ValueError(f"unknown webhook event {event!r}; expected one of {sorted(EVENTS)}")
    if "signature" in extra:
        raise ValueError("'signature' is set by build_payload, not passed in")
    payload = {"event": event, "job_id": job_id, "results": results, **extra}
    body = _canonical(payload)  # also checks that the payload is encodable
    payload["signature"] = _hmac_hex(secret, body) if secret else None
    return payload


def verify_body_signature(payload: dict, secret: str) -> bool:
    """True when payload["signature"] is the HMAC of the rest of `payload` under `secret`."""
    signature = payload.get("signature")
    if not secret or not isinstance(signature, str):
        return False
    unsigned = {k: v for k, v in payload.items() if k != "signature"}
    try:
        expected = _hmac_hex(secret, _canonical(unsigned))
    except (TypeError, ValueError):
        return False
    return _equal(expected, signature)


def header_signature(body: bytes, timestamp: str, secret: str) -> str:
    """The `X-Webhook-Signature` value for `body` sent at `timestamp` (unix seconds, a string)."""
    return "sha256=" + _hmac_hex(secret, f"{timestamp}.".encode() + body)


def verify_header_signature(body: bytes, timestamp: str, header: str, secret: str, *,
                            tolerance_s: float | None = DEFAULT_TOLERANCE_S,
                            now: float | None = None) -> bool:
    """True when `header` (X-Webhook-Signature) signs the raw `body` at `timestamp` under
    `secret`, in constant time, and `timestamp` is within `tolerance_s` of `now` (default: the
    clock; tolerance_s=None skips the freshness check)."""
    if not secret or not isinstance(header, str) or not isinstance(timestamp, str):
        return False
    if not timestamp.isascii() or not timestamp.isdigit():
        return False
    if tolerance_s is not None:
        current = time.time() if now is None else now
        if abs(current - int(timestamp)) > tolerance_s:
            return False
    return _equal(header_signature(body, timestamp, secret), header.strip())


def retry_delay_s(attempt: int, base: float = 2.0, cap: float = 300.0,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number `attempt` (1-based) before the next one.

    base * 2**(attempt - 1), capped at `cap`, minus up to 10% jitter (so it never exceeds `cap`
    and retries from many jobs spread out); pass `rng` for a deterministic jitter.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    delay = min(cap, base * 2.0 ** min(attempt - 1, 64))
    return delay * (1.0 - 0.1 * (rng or random).random())


def next_retry_delay_s(result: DeliveryResult, attempt: int,
                       rng: random.Random | None = None) -> float | None:
    """After attempt `attempt` ended in `result`: the delay before trying again, or None when
    there is nothing more to do (delivered, not retryable, or MAX_ATTEMPTS reached)."""
    if result.ok or not result.retryable or attempt >= MAX_ATTEMPTS:
        return None
    return retry_delay_s(attempt, rng=rng)


def _classify(status: int) -> tuple[bool, str | None, bool]:
    """(ok, error, retryable) for an HTTP status."""
    if 200 <= status < 300:
        return True, None, False
    if 300 <= status < 400:
        return False, f"webhook_url answered with a redirect (HTTP {status}), not followed.", False
    retryable = status in RETRYABLE_STATUSES or 500 <= status < 600
    return False, f"webhook_url answered with HTTP status {status}.", retryable


async def deliver(url: str, payload: dict, secret: str | None, policy: FetchPolicy, *,
                  delivery_id: str,
                  transport: httpx.AsyncBaseTransport | None = None) -> DeliveryResult:
    """One delivery attempt of `payload` to `url`; never raises for a failed delivery.

    Sends the canonical JSON body with the X-Webhook-* headers (signature header only with a
    secret), bounded by `policy.timeout_s`; the response body (at most 64 KiB read) is discarded.
    `transport` is for tests. Only a payload that JSON cannot encode raises (a programming error).
    """
    body = _canonical(payload)
    timestamp = str(int(time.time()))
    headers = {
        "User-Agent": USER_AGENT,
        "Content-Type": "application/json",
        EVENT_HEADER: str(payload.get("event", "")),
        ID_HEADER: delivery_id,
        TIMESTAMP_HEADER: timestamp,
    }
    if secret:
        headers[SIGNATURE_HEADER] = header_signature(body, timestamp, secret)
    started = time.monotonic()

    def result(ok: bool, status: int | None, error: str | None, retryable: bool):
        elapsed = round((time.monotonic() - started) * 1000)
        return DeliveryResult(ok, status, error, elapsed, retryable)

    try:
        status, _ = await post_json(url, body, headers, policy, transport=transport)
    except FetchError as exc:
        reason = (exc.details or {}).get("reason")
        return result(False, None, exc.message, reason in RETRYABLE_REASONS)
    except Exception as exc:  # a delivery failure must not crash the worker
        log.warning("webhook delivery %s failed unexpectedly", delivery_id, exc_info=True)
        return result(False, None, f"webhook delivery failed: {type(exc).__name__}.", True)
    ok, error, retryable = _classify(status)
    return result(ok, status, error, retryable)
