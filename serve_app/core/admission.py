"""Admission by expected wait: a synchronous request that would wait too long is refused at once.

The ingress counts the requests it has admitted to each model and not answered yet (counted
from admission, so a burst that arrives at once is counted before any of it reaches a model),
and keeps a moving average of how long a call keeps a replica busy (the seconds the replica
reports for it: inference alone, queueing not included). A model's expected wait is then

    requests in flight x seconds per call / slots

where `slots` is how many calls the model's replicas run at once (replicas x
`concurrent_inferences`; a batching pool reports each call's share of its batch, so its slots
are its replicas; an autoscaling pool is measured at its `max_replicas`, the capacity the
autoscaler grows it to under such a queue). A request whose models would make it wait longer
than `max_queue_wait_s` is answered 503 with `Retry-After` (that wait, rounded up) before its
image is decoded; the async APIs (HD, video, `/v1/jobs`) queue by design and are not admitted
here.

Each ingress replica sees only its own calls: with several ingress replicas in front of one
model pool, each refuses later than one would (their shares add up). Ray-free and HTTP-free.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

from serve_app.core.errors import ServiceUnavailable


class Admission:
    def __init__(self, slots: Mapping[str, int], max_wait_s: float,
                 smoothing: float = 0.2) -> None:
        """`slots`: calls each model runs at once; `max_wait_s` 0 admits everything;
        `smoothing`: the weight of the newest call in the moving average."""
        self.slots = {m: max(1, int(n)) for m, n in slots.items()}
        self.max_wait_s = max_wait_s
        self.smoothing = smoothing
        self._in_flight: dict[str, int] = {}
        self._seconds: dict[str, float] = {}  # moving average of a call's busy time
        self._lock = threading.Lock()  # model answers are reported from worker threads

    def observe(self, model_id: str, seconds: float) -> None:
        """A call to `model_id` kept its replica busy `seconds` (a failed call: no sample)."""
        if seconds <= 0:
            return
        with self._lock:
            old = self._seconds.get(model_id)
            self._seconds[model_id] = (seconds if old is None
                                       else old + self.smoothing * (seconds - old))

    @contextmanager
    def admitted(self, model_ids: Iterable[str]) -> Iterator[None]:
        """`admit`, then count the request in flight on its models until it is answered."""
        ids = list(dict.fromkeys(model_ids))
        with self._lock:
            self._check(ids)
            for m in ids:
                self._in_flight[m] = self._in_flight.get(m, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                for m in ids:
                    self._in_flight[m] -= 1

    def in_flight(self, model_id: str) -> int:
        return self._in_flight.get(model_id, 0)

    def expected_wait_s(self, model_ids: Iterable[str]) -> float:
        """How long a new call to these models (side by side) would wait for a free slot."""
        with self._lock:
            return self._wait(list(model_ids))

    def _wait(self, model_ids: list[str]) -> float:
        return max((self._in_flight.get(m, 0) * self._seconds.get(m, 0.0)
                    / self.slots.get(m, 1) for m in model_ids), default=0.0)

    def _check(self, ids: list[str]) -> None:
        """ServiceUnavailable (503, Retry-After) when the expected wait is over the limit."""
        if self.max_wait_s <= 0:
            return
        wait = self._wait(ids)
        if wait > self.max_wait_s:
            busiest = max(ids, key=lambda m: self._wait([m]))
            raise ServiceUnavailable(
                f"Server busy: model '{busiest}' has about {wait:.0f} s of work queued (the "
                f"limit is {self.max_wait_s:g} s); retry in {math.ceil(wait)} s.",
                {"retry_after_s": math.ceil(wait), "expected_wait_s": round(wait, 1),
                 "model": busiest})
