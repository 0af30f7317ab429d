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
from dataclasses import dataclass

from fastapi import Request

from deployments.metrics import CREDITS_CHARGED
from serve_app.core.keys import Charge, KeyStore
from serve_app.errors import request_id
from serve_app.platform import caller


@dataclass
class Credits:
    """Checks and charges of the calling key's balance (the key comes from the request)."""

    keys: KeyStore

    async def require(self, request: Request | None, credits: float) -> None:
        """InsufficientCredits (402) when the caller's balance cannot cover `credits`."""
        key = caller(request)
        if key is None or credits <= 0:
            return
        await asyncio.to_thread(self.keys.require, key.key_id, credits)

    async def charge(self, request: Request | None, charge: Charge) -> None:
        key = caller(request)
        if key is None or charge.credits <= 0:
            return
        await asyncio.to_thread(self.keys.charge, key.key_id, charge, request_id(request))
        CREDITS_CHARGED.inc(charge.credits, {"operation": charge.operation})
