"""The Redis Lua scripts of the package, each beside the module that runs it, loaded at start."""

from __future__ import annotations

from pathlib import Path

from redis.asyncio import Redis
from redis.commands.core import AsyncScript


def source(name: str, beside: str) -> str:
    """The text of `<name>.lua` in the directory of the module file `beside` (its `__file__`)."""
    return Path(beside).resolve().with_name(f"{name}.lua").read_text(encoding="utf-8")


def register(redis: Redis, name: str, beside: str) -> AsyncScript:
    """The script `<name>.lua` beside the module file `beside`, sent with EVALSHA
    (and loaded again if Redis lost it)."""
    return redis.register_script(source(name, beside))
