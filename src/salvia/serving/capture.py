"""Data capture for endpoints, in SageMaker's JSON Lines format and S3 layout:
`<DestinationS3Uri>/<endpoint>/<variant>/<yyyy>/<mm>/<dd>/<hh>/<mm-ss-mmm>-<id>.jsonl`, one
`{"captureData": {"endpointInput": ..., "endpointOutput": ...}, "eventMetadata": ...,
"eventVersion": "0"}` object per captured call.

Records are buffered per variant and written as whole objects (the store's writes are atomic),
when a buffer fills and at least every `flush_seconds`, so capture never slows an invocation.
"""

from __future__ import annotations

import base64
import random
import threading
import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from salvia.store.objects import ObjectStore

_CSV = ("text/csv",)
_JSON = ("application/json",)


def _encode(data: bytes, content_type: str, config: dict[str, Any]) -> dict[str, Any]:
    headers = config.get("CaptureContentTypeHeader") or {}
    base = content_type.split(";")[0].strip().lower()
    if base in (headers.get("CsvContentTypes") or _CSV):
        encoding, text = "CSV", data.decode("utf-8", errors="replace")
    elif base in (headers.get("JsonContentTypes") or _JSON):
        encoding, text = "JSON", data.decode("utf-8", errors="replace")
    else:
        encoding, text = "BASE64", base64.b64encode(data).decode()
    return {"observedContentType": content_type, "data": text, "encoding": encoding}


class CaptureWriter:
    def __init__(self, objects: ObjectStore, flush_seconds: float = 2.0, batch: int = 500) -> None:
        self.objects = objects
        self.batch = batch
        self._lock = threading.Lock()
        self._buffers: dict[tuple[str, str, str], list[bytes]] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(flush_seconds,), name="data-capture", daemon=True
        )
        self._thread.start()

    def capture(
        self,
        config: dict[str, Any],
        endpoint: str,
        variant: str,
        request: tuple[bytes, str],
        response: tuple[bytes, str],
        inference_id: str | None = None,
    ) -> None:
        if not config.get("EnableCapture", True):
            return
        if random.random() * 100 >= config.get("InitialSamplingPercentage", 100):
            return
        modes = {option["CaptureMode"] for option in config.get("CaptureOptions", [])} or {
            "Input",
            "Output",
        }
        data: dict[str, Any] = {}
        if "Input" in modes:
            data["endpointInput"] = {**_encode(*request, config), "mode": "INPUT"}
        if "Output" in modes:
            data["endpointOutput"] = {**_encode(*response, config), "mode": "OUTPUT"}
        metadata: dict[str, Any] = {
            "eventId": str(uuid.uuid4()),
            "inferenceTime": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
        }
        if inference_id:
            metadata["inferenceId"] = inference_id
        line = orjson.dumps({"captureData": data, "eventMetadata": metadata, "eventVersion": "0"})
        key = (config["DestinationS3Uri"].rstrip("/"), endpoint, variant)
        with self._lock:
            buffer = self._buffers.setdefault(key, [])
            buffer.append(line)
            full = len(buffer) >= self.batch
        if full:
            self.flush()

    def flush(self) -> None:
        with self._lock:
            buffers, self._buffers = self._buffers, {}
        now = datetime.now(UTC)
        for (destination, endpoint, variant), lines in buffers.items():
            if not lines:
                continue
            name = f"{now:%M-%S}-{now.microsecond // 1000:03d}-{uuid.uuid4().hex[:8]}.jsonl"
            url = f"{destination}/{endpoint}/{variant}/{now:%Y/%m/%d/%H}/{name}"
            self.objects.put_bytes(
                url, b"\n".join(lines) + b"\n", content_type="application/jsonlines"
            )

    def _run(self, flush_seconds: float) -> None:
        while not self._stop.wait(flush_seconds):
            try:
                self.flush()
            except Exception:  # a full disk or a gone bucket must not end capture for good
                import logging

                logging.getLogger(__name__).exception("data capture flush")

    def close(self) -> None:
        self._stop.set()
        self.flush()
