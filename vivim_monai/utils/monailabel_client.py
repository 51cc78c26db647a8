"""A MONAI Label HTTP client in the standard library only (``scripts/serve_monailabel.py`` loads it by file path, so
any Python runs that script): inference, the datastore's images and labels, training.

Endpoints as MONAI Label 0.8.5 serves them: ``POST /infer/<model>`` (``image`` id or uploaded ``file``, form
``params`` JSON), ``PUT /datastore/image?image=<id>`` (file ``file``), ``PUT /datastore/label?image=<id>&tag=<tag>``
(file ``label``, form ``params``), ``POST /train/<model>?run_sync=<bool>`` (JSON body), ``GET /info/``. An HTTP error
raises :class:`InferenceError` with the status and the server's reason.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from email.parser import BytesParser
from email.policy import HTTP
from pathlib import Path
from typing import Any

__all__ = [
    "InferenceError",
    "http_get",
    "request_inference",
    "save_label",
    "server_info",
    "train",
    "upload_image",
]


class InferenceError(RuntimeError):
    """The server answered a request with an HTTP error; ``status`` and ``detail`` (its reason)."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status, self.detail = status, detail


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def server_info(url: str, timeout: float = 5.0) -> dict | None:
    """``GET /info/`` as a dict, or None when the server does not answer 200."""
    try:
        status, body = http_get(f"{url}/info/", timeout)
    except (OSError, urllib.error.URLError):
        return None
    return json.loads(body) if status == 200 else None


def multipart(fields: dict[str, str], files: dict[str, tuple[str, bytes]]) -> tuple[bytes, str]:
    """A ``multipart/form-data`` body of text ``fields`` and ``files`` (field -> (file name, bytes))."""
    boundary = uuid.uuid4().hex
    parts = []
    for key, value in fields.items():
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"\r\n\r\n{value}\r\n'.encode())
    for key, (name, data) in files.items():
        parts.append(
            f'--{boundary}\r\nContent-Disposition: form-data; name="{key}"; filename="{name}"\r\n'
            f"Content-Type: application/octet-stream\r\n\r\n".encode() + data + b"\r\n"
        )
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def error_detail(body: bytes) -> str:
    """The ``detail`` of a JSON error body (FastAPI's form), else the body as text."""
    try:
        detail = json.loads(body)["detail"]
    except (ValueError, KeyError, TypeError):
        return body.decode(errors="replace")
    return detail if isinstance(detail, str) else json.dumps(detail)


def send(
    method: str, url: str, body: bytes | None = None, content_type: str = "", timeout: float = 600.0
) -> tuple[bytes, str]:
    """One request; returns (body, content type) or raises :class:`InferenceError` for an HTTP error."""
    headers = {"Content-Type": content_type} if content_type else {}
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read(), response.headers.get("Content-Type", "")
    except urllib.error.HTTPError as err:
        detail = error_detail(err.read())[:4000]
        raise InferenceError(f"{method} {url} -> HTTP {err.code}: {detail}", err.code, detail) from err


def request_inference(
    url: str,
    model: str,
    image: Path | None = None,
    params: dict | str | None = None,
    timeout: float = 600.0,
    image_id: str | None = None,
    label: Path | None = None,
) -> tuple[bytes | None, dict, float]:
    """POST a cine file (``image``) or a datastore image (``image_id``) to ``/infer/<model>?output=all``, with
    ``params`` (a dict, or a string sent as it is) and optionally a ``label`` file; returns (label bytes or None,
    result JSON, seconds)."""
    text = params if isinstance(params, str) else json.dumps(params or {})
    files = {"file": (image.name, image.read_bytes())} if image is not None else {}
    if label is not None:
        files["label"] = (label.name, label.read_bytes())
    body, content_type = multipart({"params": text}, files)
    query = {"output": "all", **({"image": image_id} if image_id else {})}
    started = time.perf_counter()
    payload, reply_type = send(
        "POST", f"{url}/infer/{model}?{urllib.parse.urlencode(query)}", body, content_type, timeout
    )
    seconds = time.perf_counter() - started
    if not reply_type.startswith("multipart/"):
        return None, json.loads(payload), seconds
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {reply_type}\r\n\r\n".encode() + payload)
    result_label, result = None, {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        if name == "params":
            result = json.loads(part.get_payload(decode=True))
        elif name == "image":
            result_label = part.get_payload(decode=True)
    return result_label, result, seconds


def upload_image(url: str, image_id: str, path: Path, timeout: float = 600.0) -> dict:
    """``PUT /datastore/image?image=<id>``: add (or replace) a cine in the datastore."""
    body, content_type = multipart({"params": "{}"}, {"file": (path.name, path.read_bytes())})
    query = urllib.parse.urlencode({"image": image_id})
    return json.loads(send("PUT", f"{url}/datastore/image?{query}", body, content_type, timeout)[0] or b"{}")


def save_label(
    url: str, image_id: str, path: Path, tag: str = "final", params: dict | None = None, timeout: float = 600.0
) -> dict:
    """``PUT /datastore/label?image=<id>&tag=<tag>``: save a label of a datastore image."""
    body, content_type = multipart({"params": json.dumps(params or {})}, {"label": (path.name, path.read_bytes())})
    query = urllib.parse.urlencode({"image": image_id, "tag": tag})
    return json.loads(send("PUT", f"{url}/datastore/label?{query}", body, content_type, timeout)[0] or b"{}")


def train(url: str, model: str, params: dict | None = None, run_sync: bool = True, timeout: float = 3600.0) -> Any:
    """``POST /train/<model>``: with ``run_sync`` the answer comes when training has ended."""
    query = urllib.parse.urlencode({"run_sync": str(run_sync).lower()})
    body = json.dumps(params or {}).encode()
    return json.loads(send("POST", f"{url}/train/{model}?{query}", body, "application/json", timeout)[0] or b"{}")
