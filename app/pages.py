"""Server-rendered pages that make the farm visible: sign in, dashboard with cart, farm panel."""

import asyncio
import os
import re
import signal
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Form, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from pydantic import ValidationError

from app import csrf
from app.auth import Auth
from app.config import DEMO_PASSWORD, DEMO_USERNAME
from app.deps import (
    Admitted,
    AuthDep,
    MaybeKey,
    MaybeSession,
    SettingsDep,
    StoreDep,
    request_id,
    same_origin,
)
from app.schemas import CartItem, Credentials
from app.services import Services
from app.sessions import CartAdd, CartFull, SessionKey

router = APIRouter(include_in_schema=False)
# Form posts, like the API's writes, must come from our own origin; the CSRF token is the second layer.
forms = APIRouter(include_in_schema=False, dependencies=[Depends(same_origin)])
templates = Jinja2Templates(directory=Path(__file__).parent / "templates")
templates.env.filters["clock"] = lambda ts: datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S UTC")
templates.env.globals.update(demo_username=DEMO_USERNAME, demo_password=DEMO_PASSWORD)

CsrfField = Annotated[str, Form(alias="csrf_token", max_length=128)]
Username = Annotated[str, Form()]
Password = Annotated[str, Form()]
INSTANCE_NAME_RE = re.compile(r"[a-z0-9-]{1,32}")
QTY_RE = re.compile(r"[0-9]{1,4}")
FIELD_MESSAGES = {"username": "3-32 characters: a-z, 0-9, _ . -", "password": "8-128 characters"}
#: The two forms of login.html, and the field a refusal of each is shown next to.
Mode = Literal["login", "register"]
REFUSED_FIELD: dict[Mode, str] = {"login": "password", "register": "username"}


def render(request: Request, template: str, key: SessionKey | None, status_code: int = 200,
           headers: Mapping[str, str] | None = None, **context: Any) -> HTMLResponse:
    settings = Services.of(request.app).settings
    token, pre_session = csrf.issue(request, settings, key)
    response = templates.TemplateResponse(
        request, template, {"csrf_token": token, "served_by": settings.instance_name, **context},
        status_code=status_code, headers={"Cache-Control": "no-store", **(headers or {})},
    )
    if pre_session:
        csrf.set_pre_session_cookie(request, response, pre_session)
    return response


def require_csrf(request: Request, key: SessionKey | None, token: str) -> None:
    if not csrf.is_valid(request, Services.of(request.app).settings, key, token):
        raise HTTPException(status.HTTP_403_FORBIDDEN, "invalid or missing CSRF token; reload the page")


def field_errors(exc: ValidationError) -> dict[str, str]:
    return {str(e["loc"][0]): FIELD_MESSAGES.get(str(e["loc"][0]), e["msg"]) for e in exc.errors()}


@router.get("/")
async def index(session: MaybeSession) -> RedirectResponse:
    return RedirectResponse("/dashboard" if session else "/login", status.HTTP_303_SEE_OTHER)


@router.get("/login")
async def login_page(request: Request, key: MaybeKey) -> HTMLResponse:
    return render(request, "login.html", key, mode="login", errors={}, username="")


@router.get("/register")
async def register_page(request: Request, key: MaybeKey) -> HTMLResponse:
    return render(request, "login.html", key, mode="register", errors={}, username="")


@forms.post("/login")  # admitted for the check only: Auth.check_login
async def login_form(request: Request, key: MaybeKey, auth: AuthDep, csrf_token: CsrfField,
                     username: Username = "", password: Password = "") -> Response:
    return await account_form(request, key, auth, csrf_token, "login", username, password)


@forms.post("/register", dependencies=[Admitted])
async def register_form(request: Request, key: MaybeKey, auth: AuthDep, csrf_token: CsrfField,
                        username: Username = "", password: Password = "") -> Response:
    return await account_form(request, key, auth, csrf_token, "register", username, password)


async def account_form(request: Request, key: SessionKey | None, auth: Auth, csrf_token: str, mode: Mode,
                       username: str, password: str) -> Response:
    """Both forms: the CSRF token, the API's own validation (its rules shown next to the fields),
    the password check or the new account, then a fresh session and the dashboard. A refusal (401,
    409, 429) is the form again with the reason next to its field, and the refusal's headers."""
    require_csrf(request, key, csrf_token)
    try:
        creds = Credentials(username=username, password=password)
    except ValidationError as exc:
        return render(request, "login.html", key, status.HTTP_422_UNPROCESSABLE_CONTENT, mode=mode,
                      username=username[:32], errors=field_errors(exc))
    try:
        if mode == "login":
            epoch = await auth.check_login(request, creds.username, creds.password)
        else:
            await auth.register(request, creds.username, creds.password, request_id())
            epoch = await auth.store.epoch(creds.username)
    except HTTPException as refused:
        return render(request, "login.html", key, refused.status_code, mode=mode, username=creds.username,
                      errors={REFUSED_FIELD[mode]: refused.detail}, headers=refused.headers)
    response = RedirectResponse("/dashboard", status.HTTP_303_SEE_OTHER)
    await auth.start_session(request, response, creds.username, epoch)
    return response


@router.get("/dashboard")
async def dashboard(request: Request, key: MaybeKey, session: MaybeSession, settings: SettingsDep) -> Response:
    if session is None:
        return RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    crashed = request.query_params.get("crashed", "")
    return render(request, "dashboard.html", key, session=session, demo_controls=settings.demo_controls,
                  console_url=settings.console_url if settings.demo_controls else "",
                  cart_max_items=settings.cart_max_items, cart_max_qty=settings.cart_max_qty,
                  error=request.query_params.get("error"),
                  crashed=crashed if INSTANCE_NAME_RE.fullmatch(crashed) else None)


@forms.post("/cart")
async def add_to_cart_form(request: Request, key: MaybeKey, store: StoreDep, csrf_token: CsrfField,
                           sku: Annotated[str, Form(max_length=64)] = "",
                           qty: Annotated[str, Form(max_length=8)] = "1") -> Response:
    require_csrf(request, key, csrf_token)
    try:
        item = CartItem(sku=sku, qty=int(qty) if QTY_RE.fullmatch(qty) else qty)
    except ValidationError:
        return RedirectResponse("/dashboard?error=item", status.HTTP_303_SEE_OTHER)
    try:
        session = await store.touch(key, CartAdd(item.sku, item.qty, request_id())) if key else None
    except CartFull:
        return RedirectResponse("/dashboard?error=full", status.HTTP_303_SEE_OTHER)
    return RedirectResponse("/dashboard" if session else "/login", status.HTTP_303_SEE_OTHER)


@forms.post("/logout")
async def logout_form(request: Request, key: MaybeKey, auth: AuthDep, csrf_token: CsrfField) -> Response:
    require_csrf(request, key, csrf_token)
    response = RedirectResponse("/login", status.HTTP_303_SEE_OTHER)
    await auth.end_session(request, response)
    return response


@forms.post("/demo/crash")
async def crash(request: Request, key: MaybeKey, session: MaybeSession, settings: SettingsDep,
                csrf_token: CsrfField) -> Response:
    """Demo only: this instance dies (SIGKILL) right after answering, as if the machine failed."""
    if not settings.demo_controls:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "Not Found")
    if session is None:
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "not signed in")
    require_csrf(request, key, csrf_token)
    asyncio.get_running_loop().call_later(0.3, os.kill, os.getpid(), signal.SIGKILL)
    return RedirectResponse(f"/dashboard?crashed={settings.instance_name}", status.HTTP_303_SEE_OTHER)
