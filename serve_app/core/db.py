"""The database: one SQLAlchemy `MetaData` for every table, and engines for SQLite or PostgreSQL.

SQLAlchemy Core (tables and SQL expressions, no ORM) gives one code path for both backends:
SQLite by default (one WAL-mode file under `data_dir`, shared by every Ray process on the
machine) and PostgreSQL on a cluster (`postgresql+psycopg://...`). Modules declare their tables
on `metadata`; `connect()` creates whichever are missing, and adds columns that a newer
version declared to tables an older one created (nullable columns only) and, on PostgreSQL,
lengthens string columns a newer version declared longer: the two kinds of schema change
this project makes without a migration tool.
"""

from __future__ import annotations

import threading
import time
from contextlib import AbstractContextManager, nullcontext
from datetime import UTC, datetime
from pathlib import Path
from typing import overload

from sqlalchemy import Engine, MetaData, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError, ProgrammingError
from sqlalchemy.pool import StaticPool

metadata = MetaData()


def now() -> datetime:
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """SQLite returns naive datetimes for what was stored as UTC; PostgreSQL aware ones."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


def _sqlite_pragmas(dbapi_conn, _record) -> None:
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA busy_timeout = 5000")  # wait for other processes' writes, don't fail
    cur.execute("PRAGMA foreign_keys = ON")
    cur.execute("PRAGMA journal_mode = WAL")  # readers never block the one writer
    cur.close()


def connect(url: str) -> tuple[Engine, AbstractContextManager]:
    """An engine for `url` with every declared table created, and the lock calls must hold
    (a real lock only for in-memory SQLite, whose one connection is shared by all threads)."""
    parsed = make_url(url)
    serial: AbstractContextManager = nullcontext()
    if parsed.get_backend_name() == "sqlite":
        db = parsed.database
        if db and db != ":memory:" and not db.startswith("file:"):
            Path(db).expanduser().parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 5.0})
        else:
            engine = create_engine(
                parsed, poolclass=StaticPool, connect_args={"check_same_thread": False})
            serial = threading.Lock()
        event.listen(engine, "connect", _sqlite_pragmas)
    else:
        # A server that does not answer fails a request in seconds instead of hanging it.
        engine = create_engine(parsed, pool_pre_ping=True, pool_timeout=5,
                               connect_args={"connect_timeout": 5})
    _create_tables(engine)
    return engine, serial


def ping(engine: Engine) -> None:
    """One round-trip to the database (raises what the driver raises when it cannot)."""
    with engine.connect() as conn:
        conn.execute(text("SELECT 1"))


def _create_tables(engine: Engine, tries: int = 5) -> None:
    """Create missing tables; several processes starting together may race on the same table,
    so 'already exists' from a concurrent creator means: look again."""
    for attempt in range(tries):
        try:
            metadata.create_all(engine)
            _add_missing_columns(engine)
            return
        except (OperationalError, ProgrammingError, IntegrityError) as exc:
            if "already exists" not in str(exc).lower() and "duplicate" not in str(exc).lower():
                raise
            if attempt == tries - 1:
                raise
            time.sleep(0.05 * (attempt + 1))


def _shorter(present, column) -> bool:
    """Whether a column's type in the database is a string shorter than the declared one."""
    want, have = getattr(column.type, "length", None), getattr(present, "length", None)
    return want is not None and have is not None and have < want


def _add_missing_columns(engine: Engine) -> None:
    """Columns added since a table was created, and string columns made longer (SQLite ignores
    lengths; PostgreSQL refuses longer values)."""
    inspector = inspect(engine)
    for table in metadata.sorted_tables:
        present = {c["name"]: c["type"] for c in inspector.get_columns(table.name)}
        for column in table.columns:
            kind = column.type.compile(dialect=engine.dialect)
            if column.name not in present:
                if not column.nullable:
                    raise RuntimeError(f"table {table.name} lacks the required column "
                                       f"{column.name}: recreate the database")
                change = f'ADD COLUMN "{column.name}" {kind}'
            elif engine.dialect.name == "postgresql" and _shorter(present[column.name], column):
                change = f'ALTER COLUMN "{column.name}" TYPE {kind}'
            else:
                continue
            with engine.begin() as conn:
                conn.execute(text(f"ALTER TABLE {table.name} {change}"))
        for index in table.indexes:  # create_all skipped them: the table existed
            index.create(engine, checkfirst=True)
