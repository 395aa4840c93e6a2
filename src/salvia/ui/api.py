"""Studio's only way to the platform: the public API's operations, called in process.

Each call goes through the protocol objects the HTTP server dispatches to (`JsonProtocol.call`,
`RestJsonProtocol.call`): the same validation against botocore's model, the same handlers and the
same shaped answers (timestamps as epoch seconds) as a boto3 client gets. Errors arrive as the
`SalviaError` the wire would have carried, so pages can show their code and message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from salvia.api.json_protocol import JsonProtocol
from salvia.api.rest_protocol import RestJsonProtocol
from salvia.errors import SalviaError


class StudioApi:
    def __init__(
        self, sagemaker: JsonProtocol, logs: JsonProtocol, metrics: RestJsonProtocol
    ) -> None:
        self._sagemaker = sagemaker
        self._logs = logs
        self._metrics = metrics

    async def sagemaker(self, operation: str, **params: Any) -> dict[str, Any]:
        return await self._sagemaker.call(operation, _present(params))

    async def logs(self, operation: str, **params: Any) -> dict[str, Any]:
        return await self._logs.call(operation, _present(params))

    async def metrics(self, operation: str, **params: Any) -> dict[str, Any]:
        return await self._metrics.call(operation, _present(params))

    async def attempt(self, operation: str, **params: Any) -> dict[str, Any] | SalviaError:
        """A call whose failure is shown in its place on the page instead of failing the page."""
        try:
            return await self.sagemaker(operation, **params)
        except SalviaError as error:
            return error

    async def every(
        self, operation: str, result_key: str, *, limit: int = 1000, **params: Any
    ) -> AsyncIterator[dict[str, Any]]:
        """The items of a List* operation over its pages, up to `limit` of them."""
        seen = 0
        token: str | None = None
        while True:
            page = await self.sagemaker(operation, NextToken=token, **params)
            for item in page.get(result_key, []):
                yield item
                seen += 1
                if seen >= limit:
                    return
            token = page.get("NextToken")
            if not token:
                return


def _present(params: dict[str, Any]) -> dict[str, Any]:
    """Members given as None are left out, as a client that does not send them."""
    return {name: value for name, value in params.items() if value is not None}
