"""The processor's own clients of the LLM and embedding endpoints.

LightRAG's OpenAI binding builds a new AsyncOpenAI client, and with it a new
SSL context and connection pool (httpx2, the SDK's transport), for every call (measured: a third of the
CPU of an ingestion). Here each endpoint gets one long-lived client: a
connection pool sized to the concurrency LightRAG is allowed, keep-alive, the
endpoint's timeout, and the SDK's own retries (which honour Retry-After) for
a passing blip. The requests are the same OpenAI-compatible requests: the
messages LightRAG builds, its JSON mode (response_format), streaming off;
LightRAG's extraction cache sits above these functions and is untouched.
What a call runs into is reported to the breakers (faults.py, breaker.py).
Every chat call holds its LLM slots while it runs: this host's, past the 429
back-off, and the cluster's when capped (llm/slots.py); the LLM client's hooks
see every 429, the SDK's retried ones included.
"""

from __future__ import annotations

import base64
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import httpx2
import numpy as np
import openai

from ..workers.breaker import DependencyGate
from ..workers.faults import EMBEDDING, LLM, classify_exception
from ..workers.stalls import CallWatch
from .llm.slots import HttpHook, LLMSlots

# The chat parameters LightRAG may pass through that an OpenAI-compatible
# endpoint understands; its own bookkeeping arguments are not sent.
CHAT_PARAMETERS = frozenset(
    {"response_format", "temperature", "top_p", "max_tokens", "max_completion_tokens", "stop", "seed"}
)
SDK_RETRIES = 2
CONNECT_TIMEOUT = 10.0
KEEPALIVE_SECONDS = 60.0


class EmptyAnswer(RuntimeError):
    """The endpoint answered without any content."""


class Endpoint:
    """One OpenAI-compatible endpoint and its long-lived client."""

    def __init__(
        self,
        *,
        name: str,
        base_url: str,
        api_key: str,
        timeout: float,
        concurrency: int,
        watch: CallWatch,
        hooks: dict[str, list[HttpHook]] | None = None,
    ) -> None:
        self.name = name
        self.watch = watch
        pool = concurrency + 2
        self._http = httpx2.AsyncClient(
            limits=httpx2.Limits(
                max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=KEEPALIVE_SECONDS
            ),
            timeout=httpx2.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            event_hooks=hooks,
        )
        self.client = openai.AsyncOpenAI(
            base_url=base_url,
            api_key=api_key or "not-needed",
            http_client=self._http,
            max_retries=SDK_RETRIES,
            timeout=timeout,
        )

    async def close(self) -> None:
        await self.client.close()


LLMFunction = Callable[..., Awaitable[str]]
EmbedFunction = Callable[..., Awaitable[np.ndarray]]
Message = dict[str, object]  # a chat message as LightRAG builds it (role, content)


def chat_messages(prompt: str, system_prompt: str | None, history_messages: Sequence[Message] | None) -> list[Message]:
    messages: list[Message] = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return [*messages, *(history_messages or []), {"role": "user", "content": prompt}]


def chat_parameters(kwargs: dict[str, Any]) -> dict[str, Any]:
    """What of LightRAG's keyword arguments goes into the request."""
    params = {key: value for key, value in kwargs.items() if key in CHAT_PARAMETERS and value is not None}
    if kwargs.get("keyword_extraction") and "response_format" not in params:
        params["response_format"] = {"type": "json_object"}
    return params


def answer_text(response: Any) -> str:
    """The answer's content; flagged when the token limit cut it (LightRAG's cache
    then does not keep it). `response` is a ChatCompletion (stream=False), which the
    SDK's overloads cannot tell with parameters passed through."""
    from lightrag.utils import TruncatedResponse, safe_unicode_decode

    choice = response.choices[0] if response and response.choices else None
    content = (choice.message.content if choice is not None else None) or ""
    if not content.strip():
        reason = getattr(choice, "finish_reason", None)
        raise EmptyAnswer(f"the LLM answered no content (finish_reason={reason})")
    if r"\u" in content:
        content = safe_unicode_decode(content.encode("utf-8"))
    if getattr(choice, "finish_reason", None) == "length":
        truncated: str = TruncatedResponse(content)
        return truncated
    return str(content)


def llm_function(endpoint: Endpoint, model: str, gate: DependencyGate, slots: LLMSlots) -> LLMFunction:
    """LightRAG's LLM function. A plain function, not a method: LightRAG deep-copies
    its configuration, functions included. Each call holds its slots (llm/slots.py);
    finding none (LLMSlotUnavailable) is not the endpoint's failure and trips no
    breaker here (the document's outcome says it, transient)."""

    async def complete(
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[Message] | None = None,
        **kwargs: Any,  # LightRAG's keywords: chat_parameters() picks what is sent
    ) -> str:
        async with slots.call():
            try:
                with endpoint.watch.track(endpoint.name):
                    response = await endpoint.client.chat.completions.create(
                        model=model,
                        messages=chat_messages(prompt, system_prompt, history_messages),  # type: ignore[arg-type]
                        stream=False,
                        **chat_parameters(kwargs),
                    )
            except Exception as exc:
                _report(gate, LLM, exc)
                raise
        return answer_text(response)

    return complete


def embed_function(endpoint: Endpoint, model: str, gate: DependencyGate) -> EmbedFunction:
    """LightRAG's embedding function: float32 vectors, fetched base64-encoded."""

    async def embed(texts: list[str], **_kwargs: object) -> np.ndarray:
        try:
            with endpoint.watch.track(endpoint.name):
                response = await endpoint.client.embeddings.create(model=model, input=texts, encoding_format="base64")
        except Exception as exc:
            _report(gate, EMBEDDING, exc)
            raise
        return np.array([_vector(item.embedding) for item in response.data], dtype=np.float32)

    return embed


def _vector(embedding: str | list[float]) -> np.ndarray:
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype=np.float32)
    return np.asarray(embedding, dtype=np.float32)


def _report(gate: DependencyGate, dependency: str, exc: BaseException) -> None:
    """A transient failure trips the dependency's breaker (the exception goes on up)."""
    failure = classify_exception(exc, dependency)
    if failure.transient:
        gate.trip(dependency, failure.message, failure.retry_after)
