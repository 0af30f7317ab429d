"""Scaling the job worker by queue depth: a Ray Serve custom autoscaling policy.

Serve's default policy counts requests in flight to a deployment; the job worker takes its work
from the job database instead, so its replicas report their own figures
(`JobWorker.record_autoscaling_stats`: jobs waiting for a worker, jobs running on the replica,
and the replica's job slots) and this policy, run by the Serve controller every control-loop
tick, asks for enough replicas to give every waiting and running job a slot. Serve applies the
deployment's `min_replicas`/`max_replicas`, `upscale_delay_s` and `downscale_delay_s` around it,
as for its own policy. Named in the Serve config by `jobs.autoscaling_config` (the builder fills
in `policy`).
"""

from __future__ import annotations

import math
from typing import Any

POLICY = "deployments.autoscaling:job_queue_policy"


def desired_workers(waiting: float, running: float, slots_per_replica: float) -> int:
    """Replicas needed to give every waiting and running job a slot (at least 1)."""
    return max(1, math.ceil((waiting + running) / max(1.0, slots_per_replica)))


def job_queue_policy(ctx: Any) -> tuple[int, dict[str, Any]]:
    """(replicas wanted, policy state) for the JobWorker deployment from its replicas' reported
    stats; before any replica has reported, the current count stands."""
    metrics = ctx.aggregated_metrics or {}
    waiting = metrics.get("jobs_waiting") or {}
    if not waiting:
        return ctx.current_num_replicas, {}
    # every replica sees the same queue (one database): take the freshest, largest figure
    queue = max(waiting.values())
    busy = metrics.get("jobs_running") or {}
    running = sum(busy.values())
    slots = max((metrics.get("job_slots") or {1: 1.0}).values())
    # never fewer replicas than are running jobs: a scale-down would restart their work
    wanted = max(desired_workers(queue, running, slots), sum(1 for n in busy.values() if n > 0))
    return wanted, {"waiting": queue, "running": running}
