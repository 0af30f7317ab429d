"""Credits per API key: a request the caller's balance cannot cover is refused before any work
(402 `insufficient_credits`), and only what succeeded is charged (`serve_app.core.keys.usage`).
Async jobs are checked here when they are submitted and charged by the worker when they
complete. Callers without a key (auth off, Python handle calls) are not charged.

Prices are settings (`BGR_PRICE_IMAGE`, `BGR_PRICE_SHOTGUN_MODEL`, `BGR_PRICE_VIDEO_SECOND`).
Checks and charges are separate steps, so concurrent requests of one key can take its balance
somewhat below zero; the next request is then refused.
"""

from __future__ import annotations

import asyncio

from fastapi import Request

from deployments.metrics import CREDITS_CHARGED
from pipelines.errors import InsufficientCredits, InvalidRequest
from serve_app.app import app
from serve_app.core.keys import Charge
from serve_app.errors import request_id
from serve_app.platform import caller
from serve_app.schemas import Usage, UsageItem


class Billing:
    async def require_credits(self, request: Request | None, credits: float) -> None:
        key = caller(request)
        if key is None or credits <= 0:
            return
        balance = await asyncio.to_thread(self.keys.balance, key.key_id)
        if balance + 1e-9 < credits:  # balances are floats: 0.3 - 0.1 - 0.1 covers 0.1
            raise InsufficientCredits(
                f"Not enough credits: this request needs {credits:g}, the balance is "
                f"{balance:g}.", {"required": credits, "balance": balance})

    async def charge(self, request: Request | None, charge: Charge) -> None:
        key = caller(request)
        if key is None or charge.credits <= 0:
            return
        await asyncio.to_thread(self.keys.charge, key.key_id, charge, request_id(request))
        CREDITS_CHARGED.inc(charge.credits, {"operation": charge.operation})

    @app.get("/v1/usage", response_model=Usage,
             summary="The calling key's credit balance and what it was charged, per operation")
    async def usage(self, request: Request) -> Usage:
        key = caller(request)
        if key is None:
            raise InvalidRequest("Usage is kept per API key; this deployment runs without keys.")
        balance, rows = await asyncio.gather(asyncio.to_thread(self.keys.balance, key.key_id),
                                             asyncio.to_thread(self.keys.usage, key.key_id))
        return Usage(key=key.name, balance=round(balance, 4),
                     total_credits=round(sum(r.credits for r in rows), 4),
                     operations=[UsageItem(operation=r.operation, count=r.count,
                                           units=round(r.units, 4), credits=round(r.credits, 4))
                                 for r in rows])
