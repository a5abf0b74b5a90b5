"""``sepconv sweep --url URL ARCH --alpha .. --resolution ..``: ask a server to build and time every variant
(``POST /v1/profile/sweep`` as a job, ``Prefer: respond-async``), show a progress bar while it runs, then print the
rows sorted by latency with the Pareto front and the best variant under ``--budget-ms`` marked (``--json``: the
endpoint's object)."""

from __future__ import annotations

import json
import sys
import time
from typing import Annotated, Any

import httpx
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from sepconv.commands.busy import ServerBusy, post_when_free


class JobError(Exception):
    """The server refused or failed the job (message for the user)."""


def _payload(response: httpx.Response) -> dict[str, Any]:
    try:
        return response.json()
    except ValueError:
        return {"error": response.text[:500]}


def run_job(url: str, path: str, body: dict[str, Any], on_progress: Any = None, on_wait: Any = None,
            timeout: float = 3600.0, max_waits: int = 20, poll: float = 0.5) -> dict[str, Any]:
    """POST ``body`` to ``path`` as a job, wait out 429s (``max_waits``), poll it to the end; its result."""
    endpoint = f"{url.rstrip('/')}{path}"
    try:
        response = post_when_free(endpoint, body, timeout=60.0, max_waits=max_waits,
                                  headers={"Prefer": "respond-async"}, on_wait=on_wait)
    except ServerBusy as exc:
        raise JobError(str(exc)) from None
    started = _payload(response)
    if response.status_code >= 400:
        raise JobError(f"HTTP {response.status_code}: {started.get('error', started)}")
    if response.status_code == 200:  # a server that ran it synchronously
        return started
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            job = _payload(httpx.get(started["job_url"], timeout=30.0))
        except httpx.HTTPError as exc:
            raise JobError(f"lost the job at {started['job_url']}: {exc}") from exc
        if "state" not in job:
            raise JobError(f"the job is gone: {job.get('error', job)}")
        if on_progress is not None:
            on_progress(job)
        if job["state"] == "done":
            return job["result"]
        if job["state"] == "failed":
            raise JobError(f"HTTP {job.get('status', 500)}: {job.get('error')}")
        time.sleep(poll)
    raise JobError(f"the job did not finish within {timeout:.0f} s")


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated numbers, got {text!r}") from None


def _ints(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"{what} must be comma-separated integers, got {text!r}") from None


def sweep_table(result: dict[str, Any]) -> Table:
    """The rows sorted by p50 latency; ``*`` marks the Pareto front, ``budget`` the best variant under it."""
    rows = result["rows"]
    front, best = set(result["pareto"]), result.get("best_under_budget")
    budget = result.get("budget_ms")
    title = (f"{result['arch']} · {result['provider']} · batch {result['batch_size']} · {result.get('runs', '?')} runs"
             + (f" · budget {budget} ms" if budget else ""))
    table = Table(title=title, header_style="bold",
                  caption="* on the latency/MACs Pareto front" + ("; ◀ best under the budget" if budget else ""))
    for col, justify in (("", "left"), ("alpha", "right"), ("res", "right"), ("precision", "left"),
                         ("params", "right"), ("MMACs", "right"), ("p50 ms", "right"), ("p90 ms", "right"),
                         ("img/s", "right"), ("", "left")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for i in sorted(range(len(rows)), key=lambda i: (rows[i]["latency_ms"]["p50"], -rows[i]["macs"])):
        r = rows[i]
        table.add_row("*" if i in front else "", f"{r['alpha']:g}", str(r["resolution"]), r["precision"],
                      f"{r['params'] / 1e6:.2f} M", f"{r['macs'] / 1e6:.1f}", f"{r['latency_ms']['p50']:.3f}",
                      f"{r['latency_ms']['p90']:.3f}", f"{r['images_per_s']:.1f}" if r["images_per_s"] else "-",
                      "◀ best under budget" if i == best else "")
    return table


def register(app: typer.Typer) -> None:
    """Add this module's command to the CLI."""

    @app.command("sweep")
    def sweep(
        arch: Annotated[str, typer.Argument(help="architecture, e.g. mobilenet_v2")],
        alpha: Annotated[str, typer.Option("--alpha", help="width multipliers, comma-separated")] = "1.0",
        resolution: Annotated[str, typer.Option("--resolution", help="resolutions, comma-separated")] = "224",
        precision: Annotated[str, typer.Option("--precision", help="fp32,fp16,int8 (comma-separated)")] = "fp32",
        url: Annotated[str, typer.Option("--url", help="server base URL")] = "http://127.0.0.1:8000",
        batch: Annotated[int, typer.Option("--batch", help="batch size")] = 1,
        runs: Annotated[int, typer.Option("--runs", help="timed runs per variant")] = 20,
        provider: Annotated[str, typer.Option("--provider", help="cpu | cuda")] = "cpu",
        budget_ms: Annotated[float | None, typer.Option("--budget-ms", help="latency budget (p50, ms)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the server's JSON, not a table")] = False,
        timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the sweep")] = 3600.0,
    ) -> None:
        """Build and time every variant of ARCH on the server; print them by latency with the Pareto front."""
        body = {"arch": arch, "alphas": _floats(alpha, "--alpha"), "resolutions": _ints(resolution, "--resolution"),
                "precisions": [p.strip() for p in precision.split(",") if p.strip()], "batch_size": batch,
                "runs": runs, "provider": provider, "budget_ms": budget_ms}
        err = Console(stderr=True)
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        try:
            with Progress(*columns, console=err, transient=True) as bar:
                task = bar.add_task(f"sweep of {arch} on {url}", total=None)

                def on_progress(job: dict[str, Any]) -> None:
                    bar.update(task, completed=job["done"], total=job["total"], description=job["stage"])

                def on_wait(seconds: float) -> None:
                    bar.update(task, description=f"another profile is running; retrying in {seconds:.0f} s")

                result = run_job(url, "/v1/profile/sweep", body, on_progress, on_wait, timeout=timeout)
        except JobError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        out = Console() if sys.stdout.isatty() else Console(width=150)
        out.print(sweep_table(result))
        if budget_ms is not None and result.get("best_under_budget") is None:
            out.print(f"no variant fits {budget_ms} ms (p50)")
