"""Pure-ASGI middleware: stamp every response with the instance's name and count it."""

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.presence import Presence


class ServedByMiddleware:
    def __init__(self, app: ASGIApp, instance: str, presence: Presence | None = None) -> None:
        self.app = app
        self.header = (b"x-served-by", instance.encode())
        self.presence = presence

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.presence is not None:
            self.presence.count_request()

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_header)
