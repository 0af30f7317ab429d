"""The web studio (`serve_app/studio/`): plain HTML and JavaScript over this API."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from starlette.exceptions import HTTPException

router = APIRouter()
STUDIO = Path(__file__).parent.parent / "studio"
STUDIO_FILES = {"studio.js": "text/javascript", "studio.css": "text/css"}


@router.get("/studio", include_in_schema=False)
async def studio():
    return FileResponse(STUDIO / "index.html", headers={"Cache-Control": "no-cache"})


@router.get("/studio/{name}", include_in_schema=False)
async def studio_file(name: str):
    if name not in STUDIO_FILES:
        raise HTTPException(404, "No such studio file.")
    return FileResponse(STUDIO / name, media_type=STUDIO_FILES[name],
                        headers={"Cache-Control": "no-cache"})
