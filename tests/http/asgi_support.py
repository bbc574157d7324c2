"""In-process requests to the API, without a server: httpx over the ASGI interface.

These tests skip uvicorn, so what only the server does (dropping the body of
a HEAD response, timing a stalled connection) is tested against a real
``sluicegate serve`` instead.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
from fastapi import FastAPI


def call(api: FastAPI, method: str, url: str, **options: Any) -> httpx.Response:
    """Send one request to ``api`` in this process and return the response."""

    async def send() -> httpx.Response:
        transport = httpx.ASGITransport(app=api)
        async with httpx.AsyncClient(transport=transport, base_url="http://api.test") as client:
            return await client.request(method, url, **options)

    return asyncio.run(send())
