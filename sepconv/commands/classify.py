"""``sepconv classify --url URL MODEL IMAGE... [--top-k K] [--json]``: the top-k classes of local image files, from
a server's ``POST /v1/models/{m}/classify`` (one request per image, the file sent as it is: the server decodes and
preprocesses it the model's way).

``--json`` prints one JSON array: per image ``{"image": PATH, ...the route's object...}``, or ``{"image", "error"}``
for an image the server refused. The exit code is 0 when every image was classified, 1 otherwise (2 for a usage
error: a missing file, a bad --top-k).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.table import Table

from sepconv.commands.options import fail

CONTENT_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".jpe": "image/jpeg",
                 ".webp": "image/webp"}


class ClassifyError(Exception):
    """The server refused or failed one image (message for the user)."""


def request_classify(client: httpx.Client, url: str, model: str, path: Path, top_k: int) -> dict[str, Any]:
    endpoint = f"{url.rstrip('/')}/v1/models/{model}/classify"
    content_type = CONTENT_TYPES.get(path.suffix.lower(), "application/octet-stream")
    try:
        response = client.post(endpoint, params={"top_k": top_k}, content=path.read_bytes(),
                               headers={"Content-Type": content_type})
    except httpx.HTTPError as exc:
        raise ClassifyError(f"cannot reach {endpoint}: {exc}") from exc
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text[:500]}
    if response.status_code >= 400 or not isinstance(payload, dict):
        message = payload.get("error", payload) if isinstance(payload, dict) else payload
        raise ClassifyError(f"HTTP {response.status_code}: {message}")
    return payload


def result_table(path: Path, result: dict[str, Any]) -> Table:
    p = result.get("preprocessing") or {}
    table = Table(title=f"{path.name} — {result.get('model')} ({p.get('style', '?')} preprocessing, "
                        f"{result.get('elapsed_ms', 0):.1f} ms)", title_justify="left")
    table.add_column("#", justify="right")
    table.add_column("class", justify="right")
    table.add_column("label")
    table.add_column("score", justify="right")
    for rank, c in enumerate(result.get("top_k", []), 1):
        table.add_row(str(rank), str(c["index"]), c.get("label") or "", f"{100 * c['score']:.2f} %")
    return table


def classify(
    model: Annotated[str, typer.Argument(help="model name on the server")],
    images: Annotated[list[Path], typer.Argument(help="image files (PNG, JPEG, WebP)")],
    url: Annotated[str, typer.Option("--url", help="server base URL, e.g. http://127.0.0.1:8000")],
    top_k: Annotated[int, typer.Option("--top-k", help="how many classes to show per image")] = 5,
    as_json: Annotated[bool, typer.Option("--json", help="print the results as one JSON array")] = False,
    timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for each answer")] = 60.0,
) -> None:
    """Top-k classes of local image files, as the server's model sees them."""
    if top_k < 1:
        raise fail(f"--top-k must be at least 1, got {top_k}")
    for path in images:
        if not path.is_file():
            raise fail(f"image file {str(path)!r} does not exist (or is not a file)")
    console = Console()
    results: list[dict[str, Any]] = []
    failed = 0
    with httpx.Client(timeout=timeout) as client:
        for path in images:
            try:
                result = request_classify(client, url, model, path, top_k)
            except ClassifyError as exc:
                failed += 1
                results.append({"image": str(path), "error": str(exc)})
                if not as_json:
                    typer.echo(f"error: {path}: {exc}", err=True)
                continue
            results.append({"image": str(path), **result})
            if not as_json:
                console.print(result_table(path, result))
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    if failed:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    app.command("classify")(classify)
