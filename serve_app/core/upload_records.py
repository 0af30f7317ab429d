"""Uploads of the /v1 API: where each file went, what it is and whose it is."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine

from serve_app.core.db import now
from serve_app.core.job_schema import uploads


class UploadRecords:
    def __init__(self, engine: Engine, serial: AbstractContextManager) -> None:
        self.engine, self._serial = engine, serial

    def add(self, upload_id: str, key: str, filename: str, media_type: str, kind: str,
            size: int, owner: str | None = None) -> None:
        with self._serial, self.engine.begin() as conn:
            conn.execute(uploads.insert().values(
                upload_id=upload_id, key=key, filename=filename, media_type=media_type,
                kind=kind, size=size, created_at=now(), owner=owner))

    def get(self, upload_id: str) -> dict[str, Any] | None:
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(select(uploads).where(uploads.c.upload_id == upload_id)).first()
        return dict(row._mapping) if row else None
