"""The Redis Lua scripts of the package (`*.lua` beside this module), loaded at start."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript

HERE = Path(__file__).resolve().parent


def source(name: str) -> str:
    return (HERE / f"{name}.lua").read_text(encoding="utf-8")


def register(redis: Redis, name: str) -> AsyncScript:
    """The script, sent with EVALSHA (and loaded again if Redis lost it)."""
    return redis.register_script(source(name))
