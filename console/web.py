"""The console's HTTP side (Flask on gevent, behind nginx at /console/): the page, its stream of
Server-Sent Events, and the controls.

Everything but /console/healthz and the static files is for a signed-in user of the farm: the
console asks the farm itself (an instance's GET /api/me with the user's session cookie) on every
request. The
controls are CSRF-protected as the farm's forms are: the request must come from one of the farm's
origins, and carry a token - an HMAC, under the farm's CSRF secret, of the user's session."""

import hmac
import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, TypeVar

import gevent.queue
import httpx
from flask import Flask, Request, Response, render_template, request, send_from_directory
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from app.config import SESSION_COOKIE, origins
from app.csrf import origin_allowed, sign
from console.crowd import MAX_SECONDS, MAX_USERS, MIN_SECONDS, MIN_USERS
from console.desk import MAX_HOLD_S, MIN_HOLD_S, Refused
from console.hub import Console

HERE = Path(__file__).parent
FARM_STATIC = HERE.parent / "app" / "static"
#: How long an idle stream waits before a comment line keeps it (and nginx's read timeout) alive.
KEEPALIVE_S = 15.0
MAX_BODY = 4096


class FaultOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    kind: Annotated[str, Field(max_length=32)]
    target: Annotated[str | None, Field(max_length=32)] = None
    seconds: Annotated[float | None, Field(ge=0, le=3600)] = None


class CrowdOrder(BaseModel):
    model_config = ConfigDict(extra="forbid")
    users: Annotated[int, Field(ge=MIN_USERS, le=MAX_USERS)] = 20
    seconds: Annotated[int, Field(ge=MIN_SECONDS, le=MAX_SECONDS)] = 60


Order = TypeVar("Order", bound=BaseModel)


class Answer(Exception):
    """Stop here and answer `status` with `detail` as JSON (or, for a page, a redirect to sign in)."""

    def __init__(self, status: int, detail: str, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.retry_after = retry_after


def json_answer(status: int, body: object, retry_after: int | None = None) -> Response:
    headers = {"Cache-Control": "no-store", **({"Retry-After": str(retry_after)} if retry_after else {})}
    return Response(json.dumps(body), status=status, mimetype="application/json", headers=headers)


def make_app(console: Console) -> Flask:
    """Natively the console is behind the farm's nginx, on the farm's own origin. Under Docker it
    runs on the host, which the farm's nginx (in a container) does not reach: it is then served on
    its own port (`direct`), links to the farm by its URL, and its own origin is one of its origins.
    The farm's session cookie reaches it either way: a cookie is the host's, whatever the port."""
    config = console.farm.config
    direct = console.farm.name != "native"
    home = config.balancer_url if direct else ""
    allowed_origins = (*config.allowed_origins, *(origins(("127.0.0.1", "localhost"), config.console_port, 0)
                                                  if direct else ()))
    app = Flask(__name__, static_url_path="/console/static", static_folder=str(HERE / "static"),
                template_folder=str(HERE / "templates"))
    app.config["MAX_CONTENT_LENGTH"] = MAX_BODY

    def session_cookie(req: Request) -> str:
        """The farm's session cookie as the browser sent it (its name has the __Host- prefix over HTTPS)."""
        name = f"__Host-{SESSION_COOKIE}" if req.headers.get("X-Forwarded-Proto") == "https" else SESSION_COOKIE
        return req.cookies.get(name, "")

    def signed_in(req: Request) -> str:
        """The user's name, as the farm knows it from their session; Answer 401 or 503 otherwise.

        Asked of the instances themselves, each in turn until one can tell: through the balancer, a
        request that meets the instance under a fault (cut off from Redis, say) gets its 503, and the
        console would lock its user out during the very fault it shows."""
        value = session_cookie(req)
        if not value or len(value) > 256:
            raise Answer(401, "not signed in")
        for inst in random.sample(config.web, len(config.web)):
            try:  # plain HTTP to the instance: the session cookie under its plain name
                me = httpx.get(f"{inst.url}/api/me", headers={"Cookie": f"{SESSION_COOKIE}={value}"}, timeout=1)
            except httpx.HTTPError:
                continue
            if me.status_code == 401:
                raise Answer(401, "not signed in")
            if me.status_code == 200:
                return str(me.json()["username"])
        raise Answer(503, "no instance can tell who you are now (the session store does not answer?)", 2)

    def token_for(req: Request) -> str:
        return sign(console.csrf_secret, "console", session_cookie(req))

    def controlled(req: Request) -> str:
        """A control's request: signed in, from our origin, with the page's token."""
        if not origin_allowed({k.lower(): v for k, v in req.headers.items()}, allowed_origins):
            raise Answer(403, "cross-origin request refused")
        user = signed_in(req)
        if not hmac.compare_digest(req.headers.get("X-CSRF-Token", ""), token_for(req)):
            raise Answer(403, "invalid or missing CSRF token; reload the page")
        return user

    def order(req: Request, model: type[Order]) -> Order:
        if not req.is_json:
            raise Answer(415, "send JSON (Content-Type: application/json)")
        try:
            return model.model_validate_json(req.get_data(cache=False) or b"{}")
        except ValidationError as exc:
            raise Answer(422, "; ".join(f"{'.'.join(map(str, e['loc'])) or 'body'}: {e['msg']}"
                                        for e in exc.errors())) from None

    @app.errorhandler(Answer)
    def answer(exc: Answer) -> Response:
        return json_answer(exc.status, {"detail": exc.detail}, exc.retry_after)

    @app.errorhandler(Refused)
    def refused(exc: Refused) -> Response:
        return json_answer(exc.status, {"detail": str(exc)})

    @app.errorhandler(413)
    def too_large(_: Exception) -> Response:
        return json_answer(413, {"detail": f"at most {MAX_BODY} bytes"})

    @app.errorhandler(404)
    def not_found(_: Exception) -> Response:
        return json_answer(404, {"detail": "Not Found"})

    @app.errorhandler(405)
    def not_allowed(_: Exception) -> Response:
        return json_answer(405, {"detail": "Method Not Allowed"})

    @app.get("/console/healthz")
    def healthz() -> Response:
        return json_answer(200, {"status": "ok"})

    @app.get("/console/")
    def page() -> Response:
        try:
            user = signed_in(request)
        except Answer as exc:
            if exc.status == 401:
                return Response("", status=303, headers={"Location": f"{home}/login", "Cache-Control": "no-store"})
            raise
        html = render_template("console.html", user=user, csrf_token=token_for(request), instances=config.web,
                               redis_mode=config.redis_mode, min_hold=MIN_HOLD_S, max_hold=MAX_HOLD_S,
                               max_users=MAX_USERS, min_seconds=MIN_SECONDS, max_seconds=MAX_SECONDS,
                               kinds=console.offered_kinds(), home=home)
        return Response(html, mimetype="text/html", headers={"Cache-Control": "no-store"})

    @app.get("/static/style.css")
    def farm_style() -> Response:
        """The farm's stylesheet, for a console on its own port (natively nginx serves /static/)."""
        return send_from_directory(FARM_STATIC, "style.css", max_age=3600)

    @app.get("/console/api/state")
    def state() -> Response:
        signed_in(request)
        return json_answer(200, console.state())

    @app.get("/console/events")
    def events() -> Response:
        signed_in(request)
        queue = console.subscribe()

        def stream() -> Iterator[str]:
            try:
                yield f"event: history\ndata: {json.dumps(console.history())}\n\n"
                while True:
                    try:
                        item = queue.get(timeout=KEEPALIVE_S)
                    except gevent.queue.Empty:
                        yield ": keep-alive\n\n"
                        continue
                    if item is None:  # the console is shutting down, or this client fell behind
                        return
                    yield f"data: {item}\n\n"
            finally:
                console.unsubscribe(queue)

        return Response(stream(), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    @app.post("/console/api/faults")
    def fault() -> Response:
        user = controlled(request)
        wanted = order(request, FaultOrder)
        entry = console.desk.cause(wanted.kind, wanted.target, wanted.seconds, user)
        return json_answer(202, entry.as_dict())

    @app.post("/console/api/crowd")
    def crowd() -> Response:
        user = controlled(request)
        wanted = order(request, CrowdOrder)
        return json_answer(202, console.start_crowd(wanted.users, wanted.seconds, user))

    @app.delete("/console/api/crowd")
    def stop_crowd() -> Response:
        controlled(request)
        return json_answer(202, console.stop_crowd())

    return app
