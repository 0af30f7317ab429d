"""API keys and their request-rate windows, in the same database as the jobs.

A key is `bgr_` + 43 random URL-safe characters (256 bits); only its SHA-256 is stored (a slow
password hash buys nothing for a random 256-bit secret) with a display prefix, a unique name,
optional per-key limits (requests per minute, concurrent jobs) and a credit balance.

Rate limits are fixed one-minute windows counted in the database (`rate_windows`), so every
ingress replica on every node sees the same count: one atomic upsert per request
(`INSERT ... ON CONFLICT DO UPDATE ... RETURNING`, on SQLite and PostgreSQL alike). A fixed
window lets a client send up to twice its limit across a window boundary; the reset time in the
headers says exactly when the count restarts.
"""

from __future__ import annotations

import builtins
import hashlib
import math
import secrets
import time
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Integer,
    String,
    Table,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError

from serve_app.core.db import as_utc, connect, metadata, now
from serve_app.core.errors import InsufficientCredits

KEY_PREFIX = "bgr_"
WINDOW_S = 60

api_keys = Table(
    "api_keys", metadata,
    Column("key_id", String(36), primary_key=True),
    Column("name", String(100), nullable=False, unique=True),
    Column("prefix", String(12), nullable=False),  # shown in listings: "bgr_AbCd1234"
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("rate_limit_per_min", Integer),  # None: the service default
    Column("max_concurrent_jobs", Integer),  # None: the service default
    Column("credits", Float, nullable=False, default=0.0),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True)),
    Column("last_used_at", DateTime(timezone=True)),
)

rate_windows = Table(
    "rate_windows", metadata,
    Column("key_id", String(36), primary_key=True),
    Column("window", BigInteger, primary_key=True),  # unix time // WINDOW_S
    Column("count", Integer, nullable=False),
)


usage = Table(  # one row per charge: what `GET /v1/usage` and `bgremove keys usage` sum up
    "usage", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("key_id", String(36), nullable=False, index=True),
    Column("operation", String(64), nullable=False),  # e.g. "image.matte", "shotgun", "v1:video"
    Column("units", Float, nullable=False),  # images, models, video seconds
    Column("credits", Float, nullable=False),
    Column("request_id", String(200)),
    Column("job_id", String(36)),
    Column("at", DateTime(timezone=True), nullable=False),
)


@dataclass(frozen=True)
class Charge:
    """What one successful operation costs the key that asked for it."""

    operation: str
    units: float
    credits: float


def apply_charge(conn, key_id: str, charge: Charge, request_id: str | None = None,
                 job_id: str | None = None) -> None:
    """Debit the key and record the charge, inside the caller's transaction (so a job's
    completion and its charge commit together)."""
    conn.execute(update(api_keys).where(api_keys.c.key_id == key_id)
                 .values(credits=api_keys.c.credits - charge.credits))
    conn.execute(usage.insert().values(
        key_id=key_id, operation=charge.operation, units=float(charge.units),
        credits=float(charge.credits), request_id=request_id, job_id=job_id, at=now()))


@dataclass(frozen=True)
class UsageRow:
    operation: str
    count: int
    units: float
    credits: float


@dataclass(frozen=True)
class ApiKey:
    key_id: str
    name: str
    prefix: str
    rate_limit_per_min: int | None
    max_concurrent_jobs: int | None
    credits: float
    created_at: datetime
    revoked_at: datetime | None

    @classmethod
    def from_row(cls, row) -> ApiKey:
        return cls(key_id=row.key_id, name=row.name, prefix=row.prefix,
                   rate_limit_per_min=row.rate_limit_per_min,
                   max_concurrent_jobs=row.max_concurrent_jobs, credits=float(row.credits),
                   created_at=as_utc(row.created_at), revoked_at=as_utc(row.revoked_at))


@dataclass(frozen=True)
class RateWindow:
    limit: int
    remaining: int
    reset: int  # unix time at which the window restarts
    allowed: bool

    def retry_after(self, t: float | None = None) -> int:
        return max(1, math.ceil(self.reset - (time.time() if t is None else t)))

    def headers(self) -> dict[str, str]:
        return {"X-RateLimit-Limit": str(self.limit),
                "X-RateLimit-Remaining": str(self.remaining),
                "X-RateLimit-Reset": str(self.reset)}


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class KeyStore:
    def __init__(self, url: str) -> None:
        self.engine, self._serial = connect(url)
        self._upsert = (postgresql.insert if self.engine.dialect.name == "postgresql"
                        else sqlite.insert)

    @classmethod
    def from_settings(cls, settings) -> KeyStore:
        return cls(settings.resolved_database_url())

    # ---- keys -------------------------------------------------------------------------------
    def create(self, name: str, *, credits: float = 0.0, rate_limit_per_min: int | None = None,
               max_concurrent_jobs: int | None = None) -> tuple[ApiKey, str]:
        """A new key: its record and the secret (shown once, never stored)."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        values = dict(key_id=str(uuid.uuid4()), name=name, prefix=secret[:12],
                      secret_hash=hash_secret(secret), rate_limit_per_min=rate_limit_per_min,
                      max_concurrent_jobs=max_concurrent_jobs, credits=float(credits),
                      created_at=now())
        try:
            with self._serial, self.engine.begin() as conn:
                conn.execute(api_keys.insert().values(**values))
        except IntegrityError:
            raise ValueError(f"a key named {name!r} already exists") from None
        key = self.get(name)
        assert key is not None
        return key, secret

    def get(self, name: str) -> ApiKey | None:
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.name == name)).first()
        return ApiKey.from_row(row) if row else None

    def list(self) -> list[ApiKey]:
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_at)).all()
        return [ApiKey.from_row(r) for r in rows]

    def revoke(self, name: str) -> bool:
        with self._serial, self.engine.begin() as conn:
            done = conn.execute(update(api_keys).where(
                api_keys.c.name == name, api_keys.c.revoked_at.is_(None)).values(revoked_at=now()))
        return done.rowcount == 1

    def set_limits(self, name: str, *, rate_limit_per_min: int | None = None,
                   max_concurrent_jobs: int | None = None) -> bool:
        values = {k: v for k, v in (("rate_limit_per_min", rate_limit_per_min),
                                    ("max_concurrent_jobs", max_concurrent_jobs)) if v is not None}
        if not values:
            return self.get(name) is not None
        with self._serial, self.engine.begin() as conn:
            return conn.execute(update(api_keys).where(api_keys.c.name == name)
                                .values(**values)).rowcount == 1

    def authenticate(self, secret: str) -> ApiKey | None:
        """The live key with this secret, or None (unknown, malformed or revoked)."""
        if not secret.startswith(KEY_PREFIX) or len(secret) > 200:
            return None
        with self._serial, self.engine.connect() as conn:
            row = conn.execute(select(api_keys).where(
                api_keys.c.secret_hash == hash_secret(secret))).first()
        if row is None or row.revoked_at is not None:
            return None
        return ApiKey.from_row(row)

    # ---- request rate -----------------------------------------------------------------------
    def hit(self, key_id: str, limit: int, t: float | None = None) -> RateWindow:
        """Count one request against the key's current window; `allowed` is False once the
        window holds more than `limit` requests."""
        t = time.time() if t is None else t
        window = int(t // WINDOW_S)
        insert = self._upsert(rate_windows).values(key_id=key_id, window=window, count=1)
        stmt = insert.on_conflict_do_update(
            index_elements=["key_id", "window"],
            set_={"count": rate_windows.c.count + 1}).returning(rate_windows.c.count)
        with self._serial, self.engine.begin() as conn:
            count = conn.execute(stmt).scalar_one()
            if count == 1:  # first request of a window: drop this key's old windows
                conn.execute(delete(rate_windows).where(
                    rate_windows.c.key_id == key_id, rate_windows.c.window < window - 1))
        return RateWindow(limit=limit, remaining=max(0, limit - count),
                          reset=(window + 1) * WINDOW_S, allowed=count <= limit)

    # ---- credits and usage ------------------------------------------------------------------
    def balance(self, key_id: str) -> float:
        with self._serial, self.engine.connect() as conn:
            value = conn.execute(select(api_keys.c.credits)
                                 .where(api_keys.c.key_id == key_id)).scalar()
        return round(float(value or 0.0), 6)

    def require(self, key_id: str, credits: float, what: str = "this request") -> None:
        """`InsufficientCredits` (a 402) when the key's balance cannot cover `credits`."""
        if credits <= 0:
            return
        balance = self.balance(key_id)
        if balance + 1e-9 < credits:  # balances are floats: 0.3 - 0.1 - 0.1 covers 0.1
            raise InsufficientCredits(
                f"Not enough credits: {what} needs {credits:g}, the balance is {balance:g}.",
                {"required": credits, "balance": balance})

    def add_credits(self, name: str, amount: float) -> float | None:
        """Top up (or, negative, take back) a key's balance; the new balance, None if unknown."""
        with self._serial, self.engine.begin() as conn:
            done = conn.execute(update(api_keys).where(api_keys.c.name == name)
                                .values(credits=api_keys.c.credits + float(amount)))
            if done.rowcount != 1:
                return None
            return float(conn.execute(select(api_keys.c.credits)
                                      .where(api_keys.c.name == name)).scalar_one())

    def charge(self, key_id: str, charge: Charge, request_id: str | None = None,
               job_id: str | None = None) -> None:
        with self._serial, self.engine.begin() as conn:
            apply_charge(conn, key_id, charge, request_id, job_id)

    def usage(self, key_id: str) -> builtins.list[UsageRow]:
        """Charges per operation (count, units, credits), largest first."""
        with self._serial, self.engine.connect() as conn:
            rows = conn.execute(
                select(usage.c.operation, func.count(), func.sum(usage.c.units),
                       func.sum(usage.c.credits))
                .where(usage.c.key_id == key_id).group_by(usage.c.operation)
                .order_by(func.sum(usage.c.credits).desc(), usage.c.operation)).all()
        return [UsageRow(op, int(n), float(u or 0), float(c or 0)) for op, n, u, c in rows]
