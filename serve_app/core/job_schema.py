"""The job tables: jobs, their audit trail, webhook delivery attempts, video progress, uploads.

The states of spec 001 live here too; `serve_app.core.job_store` moves jobs between them.
"""

from __future__ import annotations

from sqlalchemy import JSON, Boolean, Column, DateTime, ForeignKey, Integer, String, Table, Text

from serve_app.core.db import metadata

CREATED, PROCESSING, COMPLETED, FAILED = "created", "processing", "completed", "failed"
TERMINAL = (COMPLETED, FAILED)

jobs = Table(
    "jobs", metadata,
    Column("job_id", String(36), primary_key=True),
    Column("api", String(8), nullable=False),  # "hd" (spec 000) | "v1" (spec 001)
    Column("kind", String(8), nullable=False),  # "image" | "video"
    Column("state", String(16), nullable=False, index=True),
    Column("params", JSON, nullable=False),  # model, output_format, background, composition...
    Column("input_key", String(256)),  # artifact key of the input, or
    Column("input_url", Text),  # a URL the worker fetches
    Column("output_key", String(256)),
    Column("output_media_type", String(64)),
    Column("result", JSON),  # what the output's maker reports, e.g. which text_prompt terms matched
    Column("error", Text),
    # whose fault a failure was: "input" (the client's file or URL; a 4xx) or "internal" (ours)
    Column("error_kind", String(16)),
    Column("idempotency_key", String(200), unique=True),
    Column("webhook_url", Text),
    Column("webhook_secret", Text),
    Column("webhook_state", String(16)),  # None | "pending" | "delivered" | "failed"
    Column("webhook_attempts", Integer, nullable=False, default=0),
    Column("webhook_next_at", DateTime(timezone=True)),
    Column("attempts", Integer, nullable=False, default=0),
    Column("lease_owner", String(64)),
    Column("lease_expires_at", DateTime(timezone=True)),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
    Column("started_at", DateTime(timezone=True)),
    Column("completed_at", DateTime(timezone=True)),
    Column("output_expires_at", DateTime(timezone=True)),
    Column("owner", String(36), index=True),  # api_keys.key_id of the creator (None: no auth)
)

job_events = Table(
    "job_events", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.job_id"), nullable=False, index=True),
    Column("from_state", String(16)),
    Column("to_state", String(16), nullable=False),
    Column("reason", Text, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

webhook_deliveries = Table(
    "webhook_deliveries", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(36), ForeignKey("jobs.job_id"), nullable=False, index=True),
    Column("delivery_id", String(64), nullable=False),  # webhook_outbox.delivery_id
    Column("event", String(32), nullable=False),
    Column("attempt", Integer, nullable=False),
    Column("ok", Boolean, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration_ms", Integer, nullable=False),
    Column("at", DateTime(timezone=True), nullable=False),
)

job_progress = Table(  # frames done / total of a running video job (updated every few frames)
    "job_progress", metadata,
    Column("job_id", String(36), ForeignKey("jobs.job_id"), primary_key=True),
    Column("current", Integer, nullable=False),
    Column("total", Integer, nullable=False),
    Column("updated_at", DateTime(timezone=True), nullable=False),
)

uploads = Table(
    "uploads", metadata,
    Column("upload_id", String(36), primary_key=True),
    Column("key", String(256), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("media_type", String(64), nullable=False),
    Column("kind", String(8), nullable=False),
    Column("size", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("owner", String(36)),
)
