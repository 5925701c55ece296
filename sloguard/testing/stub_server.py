"""A stub of vLLM's streaming ``/v1/completions`` with exact timing and injectable faults.

It answers like vLLM does (one SSE chunk per token, a usage chunk, ``[DONE]``) after ``ttft_s``
and then every ``itl_s``, so a test knows every latency the load generator must measure. Faults
are chosen per request by the number in its ``X-Request-Id`` (``sloguard-N``): ``500`` (HTTP
error), ``reset`` (connection dropped mid-stream), ``hang`` (stream stops sending), ``cut``
(stream closed before ``[DONE]``).

Run it standalone (for benchmarks)::

    python -m sloguard.testing.stub_server --port 8100 --ttft-ms 0 --itl-ms 0
"""

from __future__ import annotations

import argparse
import asyncio
import json
from dataclasses import dataclass, field

from aiohttp import web

FAULTS: tuple[str, ...] = ("500", "reset", "hang", "cut")


@dataclass
class StubBehavior:
    """How the stub answers.

    Args:
        ttft_s: Delay before the first token.
        itl_s: Delay between tokens.
        faults: Request number -> fault (one of :data:`FAULTS`).
        fault_after_tokens: Tokens sent before a ``reset``/``hang``/``cut`` fault strikes.
    """

    ttft_s: float = 0.0
    itl_s: float = 0.0
    faults: dict[int, str] = field(default_factory=dict)
    fault_after_tokens: int = 2
    received: list[dict] = field(default_factory=list)


def _chunk(text: str, finish: str | None = None) -> bytes:
    body = {
        "id": "cmpl-stub",
        "object": "text_completion",
        "model": "stub",
        "choices": [{"index": 0, "text": text, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(body).encode() + b"\n\n"


def stub_app(behavior: StubBehavior) -> web.Application:
    """The aiohttp application of the stub."""

    async def completions(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        behavior.received.append(body)
        number = int(request.headers.get("X-Request-Id", "x-0").rsplit("-", 1)[-1])
        fault = behavior.faults.get(number)
        if fault == "500":
            return web.json_response({"error": {"message": "stub failure"}}, status=500)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        tokens = int(body["max_tokens"])
        for i in range(tokens):
            await asyncio.sleep(behavior.ttft_s if i == 0 else behavior.itl_s)
            if fault and i == behavior.fault_after_tokens:
                if fault == "reset":
                    assert request.transport is not None
                    request.transport.abort()
                    return resp
                if fault == "hang":
                    await asyncio.sleep(3600)
                if fault == "cut":
                    await resp.write_eof()
                    return resp
            await resp.write(_chunk(f"t{i}", "length" if i == tokens - 1 else None))
        usage = {"prompt_tokens": len(body["prompt"]), "completion_tokens": tokens}
        tail = json.dumps({"choices": [], "usage": usage}).encode()
        await resp.write(b"data: " + tail + b"\n\n")
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def health(_: web.Request) -> web.Response:
        return web.Response(text="")

    app = web.Application()
    app.router.add_post("/v1/completions", completions)
    app.router.add_get("/health", health)
    return app


async def start_stub(behavior: StubBehavior, host: str = "127.0.0.1") -> tuple[web.AppRunner, str]:
    """Serve the stub on a free port in the running loop; returns its runner and base URL."""
    runner = web.AppRunner(
        stub_app(behavior), access_log=None, handle_signals=False, shutdown_timeout=0.5
    )
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://{host}:{port}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Stub of vLLM's streaming /v1/completions.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--ttft-ms", type=float, default=0.0)
    parser.add_argument("--itl-ms", type=float, default=0.0)
    args = parser.parse_args(argv)
    behavior = StubBehavior(ttft_s=args.ttft_ms / 1e3, itl_s=args.itl_ms / 1e3)
    web.run_app(stub_app(behavior), host=args.host, port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
