"""`/v1/usage`: the calling key's credit balance and what it was charged, per operation."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, Request

from pipelines.errors import InvalidRequest
from serve_app.platform import caller
from serve_app.schemas import Usage, UsageItem
from serve_app.services import Svc

router = APIRouter()


@router.get("/v1/usage", response_model=Usage,
            summary="The calling key's credit balance and what it was charged, per operation")
async def usage(svc: Svc, request: Request) -> Usage:
    key = caller(request)
    if key is None:
        raise InvalidRequest("Usage is kept per API key; this deployment runs without keys.")
    keys = svc.credits.keys
    balance, rows = await asyncio.gather(asyncio.to_thread(keys.balance, key.key_id),
                                         asyncio.to_thread(keys.usage, key.key_id))
    return Usage(key=key.name, balance=round(balance, 4),
                 total_credits=round(sum(r.credits for r in rows), 4),
                 operations=[UsageItem(operation=r.operation, count=r.count,
                                       units=round(r.units, 4), credits=round(r.credits, 4))
                             for r in rows])
