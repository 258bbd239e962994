"""Server-rendered pages that make the farm visible: sign in, dashboard with cart, farm panel."""

import asyncio
import os
import re
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app import csrf
from app.api import end_session_response, start_session, verify_password
from app.deps import MaybeSession, SettingsDep, StoreDep, ThrottleDep, UsersDep, raw_token
from app.schemas import CartItem, Credentials

router = APIRouter(include_in_schema=False)
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["clock"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")

CsrfField = Annotated[str, Form(alias="csrf_token")]
INSTANCE_NAME_RE = re.compile(r"[a-z0-9-]{1,32}")


def render(request: Request, template: str, status_code: int = 200, headers: Mapping[str, str] | None = None,
           **context: Any) -> HTMLResponse:
    settings = request.app.state.settings
    token, pre_session = csrf.issue(request, settings)
    response = templates.TemplateResponse(
        request, template, {"csrf_token": token, "served_by": settings.instance_name, **context},
        status_code=status_code, headers={"Cache-Control": "no-store", **(headers or {})},
    )
    if pre_session:
        csrf.set_pre_session_cookie(request, response, pre_session)
    return response


def require_csrf(request: Request, token: str) -> None:
    if not csrf.is_valid(request, request.app.state.settings, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or missing CSRF token; reload the page")


def field_errors(exc: ValidationError) -> dict[str, str]:
    messages = {"username": "3-32 characters: a-z, 0-9, _ . -", "password": "8-128 characters"}
    return {str(e["loc"][0]): messages.get(str(e["loc"][0]), e["msg"]) for e in exc.errors()}


@router.get("/")
async def index(session: MaybeSession) -> RedirectResponse:
    return RedirectResponse("/dashboard" if session else "/login", status.HTTP_303_SEE_OTHER)


@router.get("/login")
async def login_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", mode="login", errors={}, username="")


@router.get("/register")
async def register_page(request: Request) -> HTMLResponse:
    return render(request, "login.html", mode="register", errors={}, username="")


@router.post("/login")
async def login_form(request: Request, users: UsersDep, store: StoreDep, throttle: ThrottleDep,
                     settings: SettingsDep, csrf_token: CsrfField, username: Annotated[str, Form()] = "",
                     password: Annotated[str, Form()] = "") -> Response:
    require_csrf(request, csrf_token)
    try:
        await verify_password(request, username, password, users, throttle)
    except HTTPException as refused:
        return render(request, "login.html", refused.status_code, mode="login", username=username,
                      errors={"password": refused.detail}, headers=refused.headers)
    response = RedirectResponse("/dashboard", status.HTTP_303_SEE_OTHER)
    await start_session(request, response, username, store, settings)
    return response


@router.post("/register")
async def register_form(request: Request, users: UsersDep, store: StoreDep, settings: SettingsDep,
                        csrf_token: CsrfField, username: Annotated[str, Form()] = "",
                        password: Annotated[str, Form()] = "") -> Response:
    require_csrf(request, csrf_token)
    try:
        creds = Credentials(username=username, password=password)
    except ValidationError as exc:
        return render(request, "login.html", status.HTTP_422_UNPROCESSABLE_CONTENT, mode="register",
                      username=username, errors=field_errors(exc))
    if not await users.create(creds.username, creds.password):
        return render(request, "login.html", status.HTTP_409_CONFLICT, mode="register", username=username,
                      errors={"username": "this name is taken"})
    response = RedirectResponse("/dashboard", status.HTTP_303_SEE_OTHER)
    await start_session(request, response, creds.username, store, settings)
    return response


@router.get("/dashboard")
async def dashboard(request: Request, session: MaybeSession, settings: SettingsDep) -> Response:
    if session is None:
        return RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    crashed = request.query_params.get("crashed", "")
    return render(request, "dashboard.html", session=session, demo_controls=settings.demo_controls,
                  error=request.query_params.get("error"),
                  crashed=crashed if INSTANCE_NAME_RE.fullmatch(crashed) else None)


@router.post("/cart")
async def add_to_cart_form(request: Request, store: StoreDep, settings: SettingsDep, csrf_token: CsrfField,
                           sku: Annotated[str, Form()] = "", qty: Annotated[str, Form()] = "1") -> Response:
    require_csrf(request, csrf_token)
    try:
        item = CartItem(sku=sku, qty=qty)
    except ValidationError:
        return RedirectResponse("/dashboard?error=item", status.HTTP_303_SEE_OTHER)
    session = await store.touch(raw_token(request, settings), add_item=(item.sku, item.qty))
    return RedirectResponse("/dashboard" if session else "/login", status.HTTP_303_SEE_OTHER)


@router.post("/logout")
async def logout_form(request: Request, store: StoreDep, settings: SettingsDep, csrf_token: CsrfField) -> Response:
    require_csrf(request, csrf_token)
    await store.delete(raw_token(request, settings))
    response = end_session_response(request, settings)
    response.status_code = status.HTTP_303_SEE_OTHER
    response.headers["Location"] = "/login"
    return response


@router.post("/demo/crash")
async def crash(request: Request, session: MaybeSession, settings: SettingsDep, csrf_token: CsrfField) -> Response:
    """Demo only: this instance dies (SIGKILL) right after answering, as if the machine failed."""
    if not settings.demo_controls:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")
    require_csrf(request, csrf_token)
    asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGKILL)
    return RedirectResponse(f"/dashboard?crashed={settings.instance_name}", status.HTTP_303_SEE_OTHER)
