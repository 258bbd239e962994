"""The request deadline: past it a 503 with Retry-After, at once; an answer already under way is left alone."""

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route

from app.middleware import DeadlineMiddleware

DEADLINE_S = 0.2


async def stuck(request: Request) -> JSONResponse:
    await asyncio.sleep(10)  # a store that does not answer
    return JSONResponse({})


async def slow_body(request: Request) -> StreamingResponse:
    async def chunks() -> AsyncIterator[bytes]:
        for chunk in (b"a", b"b", b"c"):
            await asyncio.sleep(DEADLINE_S)
            yield chunk

    return StreamingResponse(chunks())


async def timed_out_inside(request: Request) -> JSONResponse:
    raise TimeoutError("not the deadline's")


async def answers_as_the_deadline_strikes(request: Request) -> JSONResponse:
    """Some code between the deadline and the answer swallows the cancellation: the answer goes out anyway."""
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(10)
    return JSONResponse({"late": True})


def client() -> httpx.AsyncClient:
    app = Starlette(routes=[Route("/stuck", stuck), Route("/slow-body", slow_body),
                            Route("/timed-out-inside", timed_out_inside),
                            Route("/answers-as-the-deadline-strikes", answers_as_the_deadline_strikes)])
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=DeadlineMiddleware(app, DEADLINE_S)),
                             base_url="http://test")


async def test_a_request_past_its_deadline_gets_a_503_with_retry_after() -> None:
    async with client() as http:
        began = time.monotonic()
        response = await http.get("/stuck")
    assert DEADLINE_S <= time.monotonic() - began < DEADLINE_S + 0.1
    assert response.status_code == 503
    assert response.json() == {"detail": "session store unavailable"}
    assert response.headers["retry-after"] == "1"


async def test_an_answer_under_way_is_not_cut_short() -> None:
    async with client() as http:
        response = await http.get("/slow-body")
    assert (response.status_code, response.content) == (200, b"abc")


async def test_a_timeout_of_the_app_itself_is_not_taken_for_the_deadline() -> None:
    async with client() as http:
        with pytest.raises(TimeoutError, match="not the deadline's"):
            await http.get("/timed-out-inside")


async def test_an_answer_ready_as_the_deadline_strikes_goes_out() -> None:
    async with client() as http:
        response = await http.get("/answers-as-the-deadline-strikes")
    assert (response.status_code, response.json()) == (200, {"late": True})
