"""Small pieces of ASGI plumbing shared by the request path and Studio."""

from __future__ import annotations

from starlette.types import Message, Receive


def replay_body(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app `body` (already read by whoever looked at it first) as
    the request's one message, then goes on with the real one (for a disconnect)."""
    sent = False

    async def again() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again
