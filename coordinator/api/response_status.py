"""The status code of a response, for plain ASGI middlewares that act after the app has answered."""

from __future__ import annotations

from starlette.types import Message, Send


class ResponseStatus:
    """Pass :meth:`send` to the app in place of the server's ``send``; :attr:`code` is then the status sent
    (500 if the app failed before sending one)."""

    def __init__(self, send: Send) -> None:
        self.code = 500
        self._send = send

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self._send(message)
