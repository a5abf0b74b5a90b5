"""The network summary: DESIGN.md's ``sepconv summary --json`` object and a Keras-like table."""

from __future__ import annotations

from typing import Any

from sepconv.export.graph import KINDS, LayerInfo, layer_totals

LAYER_FIELDS = ("name", "kind", "output_shape", "params", "macs")


def summary_dict(arch: str, alpha: float, resolution: int, classes: int, layers: list[LayerInfo],
                 *, with_nodes: bool = False) -> dict[str, Any]:
    """``{"arch", "alpha", "resolution", "classes", "layers": [...], "total_params", ...}``.

    ``with_nodes`` adds each layer's ``op_type`` and ``onnx_nodes`` (the ONNX node names the layer
    became), which the model metadata carries for the profiler.
    """
    rows = []
    for la in layers:
        row: dict[str, Any] = {"name": la.name, "kind": la.kind, "output_shape": list(la.output_shape),
                               "params": la.params, "macs": la.macs}
        if with_nodes:
            row["op_type"] = la.op_type
            row["onnx_nodes"] = list(la.onnx_nodes)
        rows.append(row)
    return {"arch": arch, "alpha": float(alpha), "resolution": int(resolution), "classes": int(classes),
            "layers": rows, **layer_totals(layers)}


def by_kind(summary: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Share of multiply-adds and params per layer kind, in percent (the V1 paper's Table 2 view)."""
    macs = sum(r["macs"] for r in summary["layers"]) or 1
    params = sum(r["params"] for r in summary["layers"]) or 1
    out: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        rows = [r for r in summary["layers"] if r["kind"] == kind]
        if rows:
            out[kind] = {"count": len(rows),
                         "macs_percent": 100.0 * sum(r["macs"] for r in rows) / macs,
                         "params_percent": 100.0 * sum(r["params"] for r in rows) / params}
    return out


def _millions(n: int) -> str:
    return f"{n / 1e6:,.2f} M" if n >= 1e5 else f"{n:,}"


def render_table(summary: dict[str, Any], console: Any = None) -> None:
    """Print a Keras-like summary (layer, kind, output shape, params, MACs) with rich."""
    from rich.console import Console  # noqa: PLC0415
    from rich.table import Table  # noqa: PLC0415

    if console is None:  # a pipe or file gets the whole table; a terminal wraps long names
        console = Console()
        if not console.is_terminal:
            console = Console(width=max(console.width, 132))
    title = (f"{summary['arch']}  alpha={summary['alpha']}  resolution={summary['resolution']}  "
             f"classes={summary['classes']}")
    table = Table(title=title, show_lines=False, header_style="bold")
    table.add_column("Layer", overflow="fold")  # the whole name, wrapped, on a narrow terminal
    table.add_column("Kind")
    table.add_column("Output shape")
    table.add_column("Params", justify="right")
    table.add_column("MACs", justify="right")
    for r in summary["layers"]:
        shape = "(None, " + ", ".join(str(d) for d in r["output_shape"]) + ")"
        table.add_row(r["name"], r["kind"], shape, f"{r['params']:,}", f"{r['macs']:,}")
    console.print(table)
    console.print(f"Total params: {summary['total_params']:,} ({_millions(summary['total_params'])})")
    console.print(f"Trainable params: {summary['trainable_params']:,}")
    console.print(f"Non-trainable params: {summary['non_trainable_params']:,}")
    console.print(f"Weight params (no BN, papers' convention): {summary['weight_params']:,} "
                  f"({_millions(summary['weight_params'])})")
    console.print(f"Deployed params (ONNX, BN folded): {summary['deployed_params']:,}")
    console.print(f"Multiply-adds per image: {summary['macs']:,} ({_millions(summary['macs'])})")
    shares = by_kind(summary)
    kinds = Table(title="Share by kind", header_style="bold")
    for col in ("Kind", "Layers", "MACs %", "Params %"):
        kinds.add_column(col, justify="left" if col == "Kind" else "right")
    for kind, s in shares.items():
        kinds.add_row(kind, str(s["count"]), f"{s['macs_percent']:.2f}", f"{s['params_percent']:.2f}")
    console.print(kinds)
