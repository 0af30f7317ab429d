"""Process settings, read once from the environment (prefix `BGR_`).

Settings are per process (paths, limits, logging). What the application deploys (which models,
pools, resources) is the typed app config in `serve_app.builder`, read from the Serve YAML.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from pipelines.catalog import DEFAULT_CATALOG


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BGR_", extra="ignore")

    # Where `bgremove models pull` stores weights, and the first place the app looks for them.
    models_dir: Path = Path("~/.cache/bgremove/models")
    # One extra read-only folder searched for weights files (e.g. a shared volume, or
    # ../shared/models on the development machine). Relative paths are resolved against the
    # directory the app is started from.
    extra_models_dir: Path | None = None
    catalog_path: Path = DEFAULT_CATALOG

    max_upload_bytes: int = Field(32 * 1024 * 1024, gt=0)
    regular_max_pixels: int = Field(2048 * 2048, gt=0)
    log_level: str = "INFO"

    def model_search_dirs(self) -> list[Path]:
        dirs = [self.models_dir.expanduser().resolve()]
        if self.extra_models_dir is not None:
            dirs.append(self.extra_models_dir.expanduser().resolve())
        return dirs


@lru_cache
def get_settings() -> Settings:
    return Settings()
