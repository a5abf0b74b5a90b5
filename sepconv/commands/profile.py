"""``sepconv profile MODEL --url URL``: ask a remote server for a per-layer profile and print it as a table
(or its JSON, or CSV rows)."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from sepconv.commands.busy import ServerBusy, post_when_free

CSV_FIELDS = ("name", "kind", "op_type", "output_shape", "params", "macs", "time_us_p50", "time_us_p90", "percent",
              "gmacs_per_s", "bytes", "arithmetic_intensity", "bound", "roof_percent", "fused_into")


class ProfileError(Exception):
    """The server refused or failed the profile (message for the user)."""


def request_profile(url: str, model: str, body: dict[str, Any], timeout: float = 900.0, max_waits: int = 20,
                    on_wait: Any = None) -> dict[str, Any]:
    """POST the profile; waits out 429 (another profile running) up to ``max_waits`` times."""
    endpoint = f"{url.rstrip('/')}/v1/models/{model}/profile"
    try:
        response = post_when_free(endpoint, body, timeout=timeout, max_waits=max_waits, on_wait=on_wait)
    except ServerBusy as exc:
        raise ProfileError(str(exc)) from None
    try:
        payload = response.json()
    except ValueError:
        payload = {"error": response.text[:500]}
    if response.status_code >= 400:
        raise ProfileError(f"HTTP {response.status_code}: {payload.get('error', payload)}")
    return payload


def _fmt_int(n: int | None) -> str:
    if n is None:
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return str(n)


def layers_table(result: dict[str, Any], top: int | None = None) -> Table:
    rows = sorted(result["layers"], key=lambda r: r["time_us"]["p50"], reverse=True)
    if top:
        rows = rows[:top]
    e2e = result["e2e_ms"]
    title = (f"{result['model']} · {result['provider']} ({result.get('method', '?')}, "
             f"{'fused' if result.get('fused', True) else 'unfused'}) · batch {result['batch_size']} · "
             f"{result['runs']} runs · e2e p50 {e2e['p50']:.3f} ms / p90 {e2e['p90']:.3f} ms")
    table = Table(title=title, header_style="bold")
    for col, justify in (("layer", "left"), ("kind", "left"), ("op", "left"), ("output", "left"),
                         ("params", "right"), ("MACs", "right"), ("p50 µs", "right"), ("p90 µs", "right"),
                         ("%", "right"), ("GMAC/s", "right"), ("bytes", "right"), ("MAC/B", "right"),
                         ("bound", "left"), ("roof %", "right")):
        table.add_column(col, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    if any(r.get("fused_into") for r in rows):
        table.caption = "A → B: ONNX Runtime fused layer A into B; A's time is counted in B's row"
    for r in rows:
        name = r["name"] + (f" → {r['fused_into']}" if r.get("fused_into") else "")
        g, roof = r.get("gmacs_per_s"), r.get("roof_percent")
        intensity = r.get("arithmetic_intensity")
        table.add_row(name, r["kind"], r.get("op_type", ""), "x".join(str(d) for d in r.get("output_shape", [])),
                      _fmt_int(r["params"]), _fmt_int(r["macs"]), f"{r['time_us']['p50']:.1f}",
                      f"{r['time_us']['p90']:.1f}", f"{r['percent']:.1f}", "-" if g is None else f"{g:.2f}",
                      _fmt_int(r.get("bytes")), "-" if not intensity else f"{intensity:.2f}",
                      r.get("bound", "-") if r.get("macs") else "-", "-" if roof is None else f"{roof:.1f}")
    return table


def kinds_table(result: dict[str, Any]) -> Table:
    table = Table(title="by kind", header_style="bold")
    for col in ("kind", "layers", "time %", "MACs %", "params %"):
        table.add_column(col, justify="left" if col == "kind" else "right")
    for kind, k in sorted(result["by_kind"].items(), key=lambda kv: kv[1]["time_percent"], reverse=True):
        table.add_row(kind, str(k["count"]), f"{k['time_percent']:.1f}", f"{k['macs_percent']:.1f}",
                      f"{k['params_percent']:.1f}")
    return table


def write_csv(result: dict[str, Any], path: Path) -> None:
    """The layer rows as CSV in ``path`` (``-``: standard output)."""
    if str(path) == "-":
        _write_rows(result, sys.stdout)
        return
    with open(path, "w", newline="", encoding="utf-8") as f:
        _write_rows(result, f)


def _write_rows(result: dict[str, Any], f: Any) -> None:
    writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
    writer.writeheader()
    for r in sorted(result["layers"], key=lambda r: r["time_us"]["p50"], reverse=True):
        writer.writerow({
            "name": r["name"], "kind": r["kind"], "op_type": r.get("op_type", ""),
            "output_shape": "x".join(str(d) for d in r.get("output_shape", [])), "params": r["params"],
            "macs": r["macs"], "time_us_p50": r["time_us"]["p50"], "time_us_p90": r["time_us"]["p90"],
            "percent": r["percent"], "gmacs_per_s": "" if r.get("gmacs_per_s") is None else r["gmacs_per_s"],
            "bytes": r.get("bytes", ""), "arithmetic_intensity": r.get("arithmetic_intensity", ""),
            "bound": r.get("bound", ""), "roof_percent": "" if r.get("roof_percent") is None else r["roof_percent"],
            "fused_into": r.get("fused_into", ""),
        })


def register(app: typer.Typer) -> None:
    """Add this module's commands to the CLI."""

    @app.command("profile")
    def profile(
        model: Annotated[str, typer.Argument(help="model name on the server")],
        url: Annotated[str, typer.Option("--url", help="server base URL")] = "http://127.0.0.1:8000",
        batch: Annotated[int, typer.Option("--batch", help="batch size")] = 1,
        runs: Annotated[int, typer.Option("--runs", help="timed runs")] = 20,
        warmup: Annotated[int, typer.Option("--warmup", help="untimed warm-up runs")] = 5,
        provider: Annotated[str, typer.Option("--provider", help="cpu | cuda")] = "cpu",
        fused: Annotated[bool, typer.Option("--fused/--unfused", help="optimised (fused) or raw graph")] = True,
        method: Annotated[str, typer.Option("--method", help="auto | trace | isolated")] = "auto",
        threads: Annotated[int | None, typer.Option("--threads", help="intra-op threads (default: server's)")] = None,
        as_json: Annotated[bool, typer.Option("--json", help="print the server's JSON, not a table")] = False,
        csv_file: Annotated[Path | None, typer.Option("--csv", help="write the rows to this CSV (- = stdout)")] = None,
        top: Annotated[int | None, typer.Option("--top", help="show only the N slowest layers")] = None,
        timeout: Annotated[float, typer.Option("--timeout", help="seconds to wait for the server")] = 900.0,
    ) -> None:
        """Ask a remote server for a per-layer profile of MODEL and print it sorted by time."""
        if as_json and csv_file is not None:
            raise typer.BadParameter("use either --json or --csv FILE, not both")
        body = {"batch_size": batch, "runs": runs, "warmup": warmup, "provider": provider, "fused": fused,
                "method": method}
        if threads is not None:
            body["threads"] = threads
        err = Console(stderr=True)
        try:
            with err.status(f"profiling {model} on {url} ({runs} runs, batch {batch}, {provider})…") as status:
                def on_wait(seconds: float) -> None:
                    status.update(f"another profile is running on the server; retrying in {seconds:.0f} s…")
                result = request_profile(url, model, body, timeout=timeout, on_wait=on_wait)
        except ProfileError as exc:
            err.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(1) from None
        if as_json:
            sys.stdout.write(json.dumps(result, indent=2) + "\n")
            return
        if csv_file is not None:
            try:
                write_csv(result, csv_file)
            except OSError as exc:
                err.print(f"[red]error:[/red] cannot write {csv_file}: {exc.strerror or exc}")
                raise typer.Exit(1) from None
            if str(csv_file) == "-":
                return  # the CSV is the output
            err.print(f"wrote {len(result['layers'])} rows to {csv_file}")
        out = Console() if sys.stdout.isatty() else Console(width=150)  # pipes and files get the full table
        out.print(layers_table(result, top))
        out.print(kinds_table(result))
        gap = result.get("gap_percent")
        out.print(f"summed layer time {result.get('layer_sum_ms', 0):.3f} ms vs end-to-end p50 "
                  f"{result['e2e_ms']['p50']:.3f} ms (gap {'-' if gap is None else f'{gap:+.1f}'}%)")
        roof, corr = result.get("roofline"), result.get("time_correction")
        if corr:
            out.print(f"layer times: {corr['method']} (tracing cost {corr['tracing_cost_us_per_node']} µs/node, "
                      f"traced sum {corr['traced_layer_sum_ms']:.3f} ms, scale {corr['scale']})")
        if roof:
            out.print(f"roofline: peak {roof['peak_gmacs_per_s']:.1f} GMAC/s, bandwidth "
                      f"{roof['bandwidth_gb_per_s']:.1f} GB/s, ridge {roof.get('ridge_macs_per_byte', 0):.2f} "
                      "MACs/byte (measured on the server)")
        if result.get("trace_url"):
            out.print(f"trace (Perfetto / chrome://tracing): {result['trace_url']}")
        else:
            out.print(f"no trace: {result.get('trace_error', 'the server kept none')}")
