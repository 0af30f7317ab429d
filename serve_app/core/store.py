"""Shotgun jobs, each model's outcome in them, and the result users selected.

From these rows we read per-model win rates by image category (preference tracking). Tables
live on the shared `serve_app.core.db.metadata` (SQLite by default, PostgreSQL when configured).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from sqlalchemy import (
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    case,
    func,
    literal_column,
    select,
)

from pipelines.errors import InvalidRequest
from serve_app.core.db import connect, metadata, now
from serve_app.core.errors import UnknownJob

UNCATEGORIZED = "uncategorized"
ALL = "all"



shotgun_jobs = Table(
    "shotgun_jobs", metadata,
    Column("job_id", String(36), primary_key=True),
    Column("kind", String(32), nullable=False),  # "remove-background" | "process"
    Column("created_at", DateTime(timezone=True), nullable=False, default=now),
    Column("owner", String(36)),  # api_keys.key_id of the caller (None: no auth / Python)
)

shotgun_runs = Table(
    "shotgun_runs", metadata,
    Column("job_id", String(36), ForeignKey("shotgun_jobs.job_id"), primary_key=True),
    Column("model_id", String(128), primary_key=True),
    Column("status", String(16), nullable=False),  # "success" | "error"
    Column("processing_time_ms", Integer, nullable=False),
    Column("cost_usd", Float, nullable=False),
)

selections = Table(
    "selections", metadata,
    Column("selection_id", String(36), primary_key=True),
    Column("job_id", String(36), ForeignKey("shotgun_jobs.job_id"), nullable=False),
    Column("selected_model_id", String(128), nullable=False),
    Column("image_category", String(128), nullable=True),
    Column("notes", Text, nullable=True),
    Column("created_at", DateTime(timezone=True), nullable=False, default=now),
    Column("owner", String(36)),  # api_keys.key_id of the caller (None: no auth / Python)
    Index("ix_selections_job_id", "job_id"),
)


@dataclass(frozen=True)
class ModelRun:
    """One model's outcome in a shotgun job."""

    model_id: str
    status: str  # "success" | "error"
    processing_time_ms: int
    cost_usd: float


@dataclass(frozen=True)
class WinRate:
    category: str  # the image_category, "uncategorized", or "all" for every selection together
    model_id: str
    offered: int  # selections whose job had a successful result from this model
    wins: int  # selections that picked this model
    win_rate: float  # wins / offered (0.0 when offered == 0)


class Store:
    """Synchronous and thread-safe: each call runs in its own transaction on a pooled connection."""

    def __init__(self, url: str) -> None:
        self.engine, self._serial = connect(url)

    @classmethod
    def from_settings(cls, settings) -> Store:
        return cls(settings.resolved_database_url())

    def record_job(self, job_id: str, kind: str, runs: list[ModelRun],
                   owner: str | None = None) -> None:
        """Write the job and all its runs in one transaction."""
        with self._serial, self.engine.begin() as conn:
            conn.execute(shotgun_jobs.insert().values(job_id=job_id, kind=kind, created_at=now(),
                                                      owner=owner))
            if runs:
                conn.execute(shotgun_runs.insert(), [
                    {"job_id": job_id, "model_id": r.model_id, "status": r.status,
                     "processing_time_ms": int(r.processing_time_ms), "cost_usd": float(r.cost_usd)}
                    for r in runs
                ])

    def log_selection(self, job_id: str, selected_model_id: str, image_category: str | None = None,
                      notes: str | None = None, owner: str | None = None) -> str:
        """Record which model's result the user picked; returns the new selection_id. Only
        the job's own `owner` may (another key's job is unknown to it)."""
        if image_category == ALL:
            raise InvalidRequest(f"image_category '{ALL}' is reserved for the overall win rates.",
                                 {"field": "image_category", "received": image_category})
        with self._serial, self.engine.begin() as conn:
            rows = conn.execute(
                select(shotgun_runs.c.model_id, shotgun_runs.c.status)
                .select_from(shotgun_jobs.outerjoin(
                    shotgun_runs, shotgun_runs.c.job_id == shotgun_jobs.c.job_id))
                .where(shotgun_jobs.c.job_id == job_id, shotgun_jobs.c.owner == owner)
            ).all()
            if not rows:
                raise UnknownJob(f"Unknown job_id '{job_id}': no shotgun job with this id.",
                                 {"field": "job_id", "received": job_id})
            status = {m: s for m, s in rows if m is not None}
            allowed = sorted(m for m, s in status.items() if s == "success")
            details = {"field": "selected_model_id", "received": selected_model_id,
                       "allowed": allowed}
            if selected_model_id not in status:
                raise InvalidRequest(
                    f"Model '{selected_model_id}' was not part of shotgun job '{job_id}'.", details)
            if status[selected_model_id] != "success":
                raise InvalidRequest(
                    f"Model '{selected_model_id}' failed in shotgun job '{job_id}' and produced "
                    "no result to select.", details)
            selection_id = str(uuid.uuid4())
            conn.execute(selections.insert().values(
                selection_id=selection_id, job_id=job_id, selected_model_id=selected_model_id,
                image_category=image_category, notes=notes, created_at=now(), owner=owner))
        return selection_id

    def rates_by_category(self) -> dict[str, dict[str, tuple[int, int]]]:
        """category -> model id -> (wins, offered): what `model=auto` weighs."""
        rates: dict[str, dict[str, tuple[int, int]]] = {}
        for r in self.win_rates():
            rates.setdefault(r.category, {})[r.model_id] = (r.wins, r.offered)
        return rates

    def win_rates(self, category: str | None = None) -> list[WinRate]:
        """Per category (plus "all"): how often each model was offered and picked.

        Every model that succeeded in a selection's job is offered once per selection; the
        picked one also wins. Counted in SQL; only the aggregated rows come back.
        """
        s, r = selections.c, shotgun_runs.c
        # Constants inlined (not bound) so PostgreSQL sees the same expression in SELECT and
        # GROUP BY.
        cat = func.coalesce(s.image_category, literal_column(f"'{UNCATEGORIZED}'"))
        offered = func.count()
        wins = func.sum(case((r.model_id == s.selected_model_id, 1), else_=0))
        joined = selections.join(shotgun_runs, (r.job_id == s.job_id) & (r.status == "success"))
        queries = []
        if category != ALL:
            q = select(cat, r.model_id, offered, wins).select_from(joined).group_by(cat, r.model_id)
            queries.append(q if category is None else q.where(cat == category))
        if category in (None, ALL):
            queries.append(select(literal_column(f"'{ALL}'"), r.model_id, offered, wins)
                           .select_from(joined).group_by(r.model_id))
        with self._serial, self.engine.connect() as conn:
            rows = [row for q in queries for row in conn.execute(q).all()]
        out = [WinRate(str(c), m, int(o), int(w), int(w) / int(o) if o else 0.0)
               for c, m, o, w in rows]
        return sorted(out, key=lambda x: (x.category, -x.win_rate, x.model_id))

    def close(self) -> None:
        self.engine.dispose()
