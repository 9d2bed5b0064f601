# SPDX-License-Identifier: Apache-2.0
"""A small load generator for the server tests: every response is
classified (status, error body, stream ending, transport error), so that a
test can count them and assert that each one was an allowed answer."""

import asyncio
import json
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

PROMPT = "The quick brown fox"


@dataclass
class Outcome:
    """How one request ended."""

    model: str
    stream: bool
    status: int | None = None
    """HTTP status; None if no HTTP answer came (reset, timeout)."""
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    error_type: str | None = None
    """``error.type`` of an error body, or of a stream's error event."""
    error_message: str = ""
    retry_after: str | None = None
    stream_done: bool = False
    """A stream ended with ``data: [DONE]``."""
    transport_error: str | None = None
    started: float = 0.0
    ended: float = 0.0

    @property
    def label(self) -> str:
        if self.transport_error:
            return f"transport:{self.transport_error}"
        if self.status == 200 and self.error_type:
            return f"200+error-event:{self.error_type}"
        return f"{self.status}" + (f":{self.error_type}" if self.error_type else "")

    def allowed(self) -> str | None:
        """Why this is not an acceptable answer (None: it is): a 200 that
        completed, a 200 stream that ended with an error event and
        ``[DONE]``, or a 503 with ``Retry-After`` and an OpenAI error body."""
        if self.transport_error:
            return f"no HTTP answer: {self.transport_error}"
        if self.status == 200:
            if self.stream and not self.stream_done:
                return "stream did not end with [DONE]"
            return None
        if self.status == 503:
            if self.error_type is None:
                return "503 without an OpenAI error body"
            if self.retry_after is None and "management API" not in (
                self.error_message
            ):
                return "503 without Retry-After"
            return None
        return f"status {self.status}: {self.error_type} {self.error_message[:200]}"


async def completion(
    client: httpx.AsyncClient,
    model: str,
    stream: bool,
    max_tokens: int = 8,
    timeout: float = 180.0,
    on_first_chunk: asyncio.Event | None = None,
) -> Outcome:
    """One greedy completion of PROMPT, classified."""
    out = Outcome(model, stream, started=time.monotonic())
    body = {
        "model": model,
        "prompt": PROMPT,
        "max_tokens": max_tokens,
        "temperature": 0,
        "ignore_eos": True,
        "return_token_ids": True,
        "stream": stream,
    }
    try:
        async with asyncio.timeout(timeout):
            async with client.stream("POST", "/v1/completions", json=body) as r:
                out.status = r.status_code
                out.retry_after = r.headers.get("retry-after")
                if r.status_code != 200 or not stream:
                    _read_body(out, await r.aread())
                else:
                    async for line in r.aiter_lines():
                        if on_first_chunk is not None:
                            on_first_chunk.set()
                        _read_event(out, line)
    except TimeoutError:
        out.transport_error = "timeout"
    except httpx.TransportError as e:
        out.transport_error = type(e).__name__
    out.ended = time.monotonic()
    return out


def greedy_tokens(
    url: str, model: str, max_tokens: int = 8, timeout: float = 120.0
) -> list[int]:
    """The token ids of one greedy, non-streamed completion of PROMPT from
    the server at ``url``; any other answer fails the test."""

    async def one() -> Outcome:
        async with httpx.AsyncClient(base_url=url, timeout=timeout) as client:
            return await completion(client, model, False, max_tokens, timeout)

    out = asyncio.run(one())
    assert out.status == 200, f"{out.label}: {out.error_message}"
    return out.token_ids


def _read_body(out: Outcome, raw: bytes) -> None:
    try:
        payload = json.loads(raw)
    except ValueError:
        out.error_message = raw[:200].decode(errors="replace")
        return
    if "error" in payload:
        out.error_type = payload["error"].get("type")
        out.error_message = payload["error"].get("message", "")
    else:
        choice = payload["choices"][0]
        out.token_ids = choice.get("token_ids") or []
        out.text = choice["text"]


def _read_event(out: Outcome, line: str) -> None:
    if not line.startswith("data: "):
        return
    data = line[len("data: ") :]
    if data == "[DONE]":
        out.stream_done = True
        return
    payload = json.loads(data)
    if "error" in payload:
        out.error_type = payload["error"].get("type")
        out.error_message = payload["error"].get("message", "")
        return
    for choice in payload.get("choices", []):
        out.text += choice.get("text", "")
        out.token_ids += choice.get("token_ids") or []


def summary(outcomes: list[Outcome]) -> dict[str, int]:
    return dict(Counter(o.label for o in outcomes))
