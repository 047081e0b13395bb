"""A small ASGI app for the uvicorn integration test (run by uvicorn in a subprocess).

GET /loop     -> the module of the running loop's class (proves which loop serves)
POST /echo    -> the request body, with its sha256 in x-sha256
GET /stream   -> ?n=&seed=: n seeded random bytes, sent as many body messages
websocket /ws -> echoes text and bytes messages
"""

from __future__ import annotations

import asyncio
import hashlib
import random
from urllib.parse import parse_qs


def _rand(n: int, seed: int) -> bytes:
    return random.Random(seed).randbytes(n)


async def app(scope, receive, send):  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        while True:
            msg = await receive()
            if msg["type"] == "websocket.disconnect":
                return
            if msg.get("bytes") is not None:
                await send({"type": "websocket.send", "bytes": msg["bytes"]})
            else:
                await send({"type": "websocket.send", "text": msg["text"]})
    path = scope["path"]
    if path == "/echo":
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body"):
                break
        body = b"".join(chunks)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", b"application/octet-stream"),
                    (b"content-length", str(len(body)).encode()),
                    (b"x-sha256", hashlib.sha256(body).hexdigest().encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/loop":
        body = type(asyncio.get_running_loop()).__module__.encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body})
    elif path == "/stream":
        q = parse_qs(scope["query_string"].decode())
        n, seed = int(q["n"][0]), int(q["seed"][0])
        data = _rand(n, seed)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        rng = random.Random(seed)
        i = 0
        while i < n:
            step = rng.randint(1, 100_000)
            await send(
                {"type": "http.response.body", "body": data[i : i + step], "more_body": True}
            )
            i += step
        await send({"type": "http.response.body", "body": b""})
    else:
        await send({"type": "http.response.start", "status": 404, "headers": []})
        await send({"type": "http.response.body", "body": b"not found"})
