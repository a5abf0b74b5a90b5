"""The model page's charts, rendered as SVG on the server from a profile or a sweep response.

Why server-side SVG: the page needs four plain charts (bars, grouped bars, two log/linear scatters); drawing them in
Python from the very objects the API returns keeps one source of numbers, needs no JavaScript charting library to
vendor, pin and audit, works with scripts off, and is testable without a browser. Every chart is an ``<svg>`` with
``data-chart="NAME"`` and ``data-points="N"`` (its marks); every mark carries ``class="mark"`` and the numbers it
plots (``data-name``, ``data-value`` / ``data-x`` / ``data-y``), and a ``<title>`` tooltip, so a test (or a reader
of the page source) can check a mark against the API.

* :func:`layer_times` — one bar per profile row, in network order, coloured by kind; a fused layer (its work done by
  another layer's node, time 0) is a hollow marker at the baseline titled "fused into ...";
  a stacked bar underneath shows the total split by kind (not counted in ``data-points``).
* :func:`by_kind` — per kind, three bars: share of time, of MACs, of params (``data-points`` = 3 x kinds).
* :func:`roofline` — log-log: arithmetic intensity (MACs/byte) vs attained GMAC/s, one point per conv/dense layer
  with multiply-adds and a time, under both ceilings (bandwidth slope and compute peak).
* :func:`sweep` — p50 latency (ms) vs MACs, one point per variant; the Pareto front joined and filled, the best
  variant under the budget ringed, the budget as a vertical line.
"""

from __future__ import annotations

import math
from html import escape
from typing import Any

from sepconv.export.graph import KINDS

COLORS = {"standard": "#1f77b4", "depthwise": "#d62728", "pointwise": "#2ca02c", "dense": "#9467bd",
          "pool": "#8c564b", "add": "#e377c2", "bn": "#7f7f7f", "activation": "#bcbd22", "other": "#17becf"}
METRIC_COLORS = {"time": "#0645ad", "macs": "#e69f00", "params": "#999999"}
W, H = 760, 260
PAD_L, PAD_R, PAD_T, PAD_B = 64, 16, 16, 40


def _color(kind: str) -> str:
    return COLORS.get(kind, "#555")


def _a(value: Any) -> str:
    return escape(str(value), quote=True)


def _num(x: float) -> str:
    return f"{x:.6g}"


def _svg(name: str, points: int, body: list[str], *, height: int = H, label: str = "") -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" data-chart="{_a(name)}" data-points="{points}" '
            f'viewBox="0 0 {W} {height}" width="{W}" height="{height}" role="img" aria-label="{_a(label or name)}" '
            f'font-family="system-ui, sans-serif" font-size="11">' + "".join(body) + "</svg>")


def _axes(x_label: str, y_label: str, height: int = H) -> list[str]:
    y0 = height - PAD_B
    return [f'<line x1="{PAD_L}" y1="{PAD_T}" x2="{PAD_L}" y2="{y0}" stroke="#333"/>',
            f'<line x1="{PAD_L}" y1="{y0}" x2="{W - PAD_R}" y2="{y0}" stroke="#333"/>',
            f'<text x="{(PAD_L + W - PAD_R) / 2}" y="{height - 6}" text-anchor="middle">{escape(x_label)}</text>',
            f'<text x="12" y="{(PAD_T + y0) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(PAD_T + y0) / 2})">{escape(y_label)}</text>']


def _nice_max(v: float) -> float:
    if v <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(v))
    for m in (1, 2, 2.5, 5, 10):
        if v <= m * exp:
            return m * exp
    return 10 * exp


def _legend(items: list[tuple[str, str]], x: float, y: float) -> list[str]:
    out = []
    for i, (label, color) in enumerate(items):
        xx = x + 96 * i
        out.append(f'<rect x="{xx}" y="{y - 9}" width="10" height="10" fill="{color}"/>'
                   f'<text x="{xx + 14}" y="{y}">{escape(label)}</text>')
    return out


# --------------------------------------------------------------------------------------------
def layer_times(profile: dict[str, Any]) -> str:
    rows = profile["layers"]
    n = len(rows)
    height = H + 40
    y0 = H - PAD_B
    top = _nice_max(max((r["time_us"]["p50"] for r in rows), default=1.0))
    step = (W - PAD_L - PAD_R) / max(n, 1)
    body = _axes("layers, network order", "p50 time (µs)")
    body.append(f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end">{_num(top)}</text>'
                f'<text x="{PAD_L - 4}" y="{y0}" text-anchor="end">0</text>')
    for i, r in enumerate(rows):
        t = float(r["time_us"]["p50"])
        x = PAD_L + i * step
        attrs = (f'class="mark" data-name="{_a(r["name"])}" data-kind="{_a(r["kind"])}" data-value="{_num(t)}" '
                 f'data-index="{i}"')
        if r.get("fused_into"):
            tip = f'{r["name"]} ({r["kind"]}): fused into {r["fused_into"]}, its time is counted there'
            body.append(f'<rect {attrs} data-fused-into="{_a(r["fused_into"])}" x="{_num(x + step * 0.15)}" '
                        f'y="{y0 - 6}" width="{_num(max(step * 0.7, 1))}" height="6" fill="none" '
                        f'stroke="{_color(r["kind"])}" stroke-dasharray="2 1"><title>{escape(tip)}</title></rect>')
            continue
        h = (y0 - PAD_T) * t / top
        tip = f'{r["name"]} ({r["kind"]}): {t:.1f} µs p50, {r.get("percent", 0):.1f} %'
        body.append(f'<rect {attrs} x="{_num(x + step * 0.1)}" y="{_num(y0 - h)}" width="{_num(max(step * 0.8, 1))}" '
                    f'height="{_num(h)}" fill="{_color(r["kind"])}"><title>{escape(tip)}</title></rect>')
    # the total stacked by kind (a summary, not marks)
    total = sum(float(r["time_us"]["p50"]) for r in rows) or 1.0
    x = float(PAD_L)
    kinds = [k for k in KINDS if any(r["kind"] == k for r in rows)]
    for k in kinds:
        part = sum(float(r["time_us"]["p50"]) for r in rows if r["kind"] == k)
        w = (W - PAD_L - PAD_R) * part / total
        body.append(f'<rect class="stack" data-kind="{_a(k)}" data-value="{_num(part)}" x="{_num(x)}" y="{H - 4}" '
                    f'width="{_num(w)}" height="12" fill="{_color(k)}"><title>{escape(k)}: {part / 1000:.3f} ms '
                    f'({100 * part / total:.1f} %)</title></rect>')
        x += w
    body += _legend([(k, _color(k)) for k in kinds], PAD_L, H + 30)
    return _svg("layer-times", n, body, height=height, label="per-layer p50 time")


def by_kind(profile: dict[str, Any]) -> str:
    kinds = list(profile["by_kind"].items())
    group = (W - PAD_L - PAD_R) / max(len(kinds), 1)
    y0 = H - PAD_B
    body = _axes("layer kind", "share (%)")
    body.append(f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end">100</text>')
    marks = 0
    for i, (kind, share) in enumerate(kinds):
        for j, metric in enumerate(("time", "macs", "params")):
            v = float(share[f"{metric}_percent"])
            h = (y0 - PAD_T) * v / 100.0
            x = PAD_L + i * group + group * (0.1 + 0.27 * j)
            body.append(f'<rect class="mark" data-kind="{_a(kind)}" data-metric="{metric}" data-value="{_num(v)}" '
                        f'x="{_num(x)}" y="{_num(y0 - h)}" width="{_num(group * 0.25)}" height="{_num(h)}" '
                        f'fill="{METRIC_COLORS[metric]}"><title>{escape(kind)}: {v:.1f} % of {metric}</title></rect>')
            marks += 1
        body.append(f'<text x="{_num(PAD_L + (i + 0.5) * group)}" y="{y0 + 14}" text-anchor="middle">'
                    f'{escape(kind)} ({share["count"]})</text>')
    body += _legend([(f"% {m}", c) for m, c in METRIC_COLORS.items()], W - 300, PAD_T + 8)
    return _svg("by-kind", marks, body, label="share of time, MACs and params by layer kind")


def _log_scale(lo: float, hi: float, a: float, b: float):  # noqa: ANN202 - a small closure
    llo, lhi = math.log10(lo), math.log10(hi)
    return lambda v: a + (b - a) * (math.log10(v) - llo) / (lhi - llo)


def roofline_points(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows a roofline plots: conv/dense layers with multiply-adds, bytes and a time."""
    from sepconv.service.profiling.roofline import ROOFLINE_KINDS  # noqa: PLC0415

    return [r for r in profile["layers"] if r["kind"] in ROOFLINE_KINDS and r.get("macs") and r.get("bytes")
            and r.get("gmacs_per_s")]


def roofline(profile: dict[str, Any]) -> str:
    roof = profile["roofline"]
    peak, bw = float(roof["peak_gmacs_per_s"]), float(roof["bandwidth_gb_per_s"])
    pts = roofline_points(profile)
    xs = [float(r["arithmetic_intensity"]) for r in pts] + [peak / bw]
    ys = [float(r["gmacs_per_s"]) for r in pts] + [peak]
    x_lo, x_hi = 10 ** math.floor(math.log10(min(xs) / 2)), 10 ** math.ceil(math.log10(max(xs) * 2))
    y_lo, y_hi = 10 ** math.floor(math.log10(max(min(ys) / 2, 1e-3))), 10 ** math.ceil(math.log10(peak * 1.5))
    y0 = H - PAD_B
    sx = _log_scale(x_lo, x_hi, PAD_L, W - PAD_R)
    sy = _log_scale(y_lo, y_hi, y0, PAD_T)
    body = _axes("arithmetic intensity (MACs / byte, log)", "attained GMAC/s (log)")
    for v in (x_lo, x_hi):
        body.append(f'<text x="{_num(sx(v))}" y="{y0 + 14}" text-anchor="middle">{_num(v)}</text>')
    for v in (y_lo, y_hi):
        body.append(f'<text x="{PAD_L - 4}" y="{_num(sy(v) + 4)}" text-anchor="end">{_num(v)}</text>')
    ridge = peak / bw
    # memory roof: bw * x from x_lo to the ridge (clipped to the plot), then the compute roof
    x_start = max(x_lo, y_lo / bw)
    body.append(f'<line class="ceiling" data-ceiling="bandwidth" data-value="{_num(bw)}" x1="{_num(sx(x_start))}" '
                f'y1="{_num(sy(bw * x_start))}" x2="{_num(sx(ridge))}" y2="{_num(sy(peak))}" stroke="#b00020" '
                f'stroke-width="2"><title>memory roof: {bw:.1f} GB/s</title></line>')
    body.append(f'<line class="ceiling" data-ceiling="compute" data-value="{_num(peak)}" x1="{_num(sx(ridge))}" '
                f'y1="{_num(sy(peak))}" x2="{W - PAD_R}" y2="{_num(sy(peak))}" stroke="#0a7a2f" stroke-width="2">'
                f'<title>compute roof: {peak:.1f} GMAC/s</title></line>')
    body.append(f'<text x="{W - PAD_R - 4}" y="{_num(sy(peak) - 4)}" text-anchor="end">{peak:.1f} GMAC/s peak</text>'
                f'<text x="{_num(sx(x_start) + 4)}" y="{_num(sy(bw * x_start) - 6)}">{bw:.1f} GB/s</text>')
    for r in pts:
        x, y = float(r["arithmetic_intensity"]), float(r["gmacs_per_s"])
        tip = (f'{r["name"]} ({r["kind"]}): {x:.2f} MACs/B, {y:.2f} GMAC/s, {r["bound"]}-bound, '
               f'{r["roof_percent"]} % of its roof')
        body.append(f'<circle class="mark" data-name="{_a(r["name"])}" data-kind="{_a(r["kind"])}" '
                    f'data-x="{_num(x)}" data-y="{_num(y)}" data-bound="{_a(r["bound"])}" cx="{_num(sx(x))}" '
                    f'cy="{_num(sy(y))}" r="4" fill="{_color(r["kind"])}" fill-opacity="0.8">'
                    f'<title>{escape(tip)}</title></circle>')
    kinds = [k for k in KINDS if any(r["kind"] == k for r in pts)]
    body += _legend([(k, _color(k)) for k in kinds], PAD_L + 8, PAD_T + 8)
    return _svg("roofline", len(pts), body, label="roofline: attained GMAC/s vs arithmetic intensity")


def sweep(result: dict[str, Any]) -> str:
    rows = result["rows"]
    front = set(result.get("pareto", []))
    best = result.get("best_under_budget")
    budget = result.get("budget_ms")
    y0 = H - PAD_B
    slowest = max((r["latency_ms"]["p50"] for r in rows), default=1.0)
    # the budget widens the axis only up to twice the slowest variant (a 1 s budget would squash the points)
    x_hi = _nice_max(max(slowest, min(budget or 0, 2 * slowest)) * 1.05)
    y_hi = _nice_max(max((r["macs"] for r in rows), default=1) * 1.05)

    def sx(v: float) -> float:
        return PAD_L + (W - PAD_L - PAD_R) * v / x_hi

    def sy(v: float) -> float:
        return y0 - (y0 - PAD_T) * v / y_hi

    body = _axes("p50 latency (ms)", "multiply-adds (M)")
    body.append(f'<text x="{_num(W - PAD_R)}" y="{y0 + 14}" text-anchor="end">{_num(x_hi)}</text>'
                f'<text x="{PAD_L - 4}" y="{PAD_T + 4}" text-anchor="end">{_num(y_hi / 1e6)}</text>')
    line = sorted(front, key=lambda i: rows[i]["latency_ms"]["p50"])
    if len(line) > 1:
        d = " ".join(f"{_num(sx(rows[i]['latency_ms']['p50']))},{_num(sy(rows[i]['macs']))}" for i in line)
        body.append(f'<polyline class="front" points="{d}" fill="none" stroke="#0645ad" stroke-dasharray="4 2"/>')
    if budget and budget <= x_hi:
        body.append(f'<line class="budget" data-value="{_num(budget)}" x1="{_num(sx(budget))}" y1="{PAD_T}" '
                    f'x2="{_num(sx(budget))}" y2="{y0}" stroke="#b00020" stroke-dasharray="3 3">'
                    f'<title>budget {budget} ms</title></line>')
    elif budget:
        body.append(f'<text class="budget" data-value="{_num(budget)}" x="{W - PAD_R}" y="{PAD_T + 10}" '
                    f'text-anchor="end" fill="#b00020">budget {budget} ms (off the chart) →</text>')
    for i, r in enumerate(rows):
        lat, macs = float(r["latency_ms"]["p50"]), int(r["macs"])
        on_front = i in front
        tip = (f'alpha {r["alpha"]} {r["resolution"]} px {r["precision"]}: {lat:.3f} ms p50, {macs / 1e6:.1f} M MACs, '
               f'{r["params"] / 1e6:.2f} M params' + (" — on the front" if on_front else "")
               + (" — best under the budget" if i == best else ""))
        body.append(f'<circle class="mark" data-index="{i}" data-x="{_num(lat)}" data-y="{macs}" '
                    f'data-front="{str(on_front).lower()}" cx="{_num(sx(lat))}" cy="{_num(sy(macs))}" r="5" '
                    f'fill="{"#0645ad" if on_front else "#fff"}" stroke="#0645ad">'
                    f'<title>{escape(tip)}</title></circle>')
        tag = f'{r["alpha"]}/{r["resolution"]}' + ("" if r["precision"] == "fp32" else f'/{r["precision"]}')
        body.append(f'<text x="{_num(sx(lat) + 7)}" y="{_num(sy(macs) + 4)}" font-size="10">{escape(tag)}</text>')
        if i == best:
            body.append(f'<circle class="best" cx="{_num(sx(lat))}" cy="{_num(sy(macs))}" r="9" fill="none" '
                        f'stroke="#b00020" stroke-width="2"/>')
    return _svg("sweep", len(rows), body, label="sweep: latency vs multiply-adds, Pareto front")


# --------------------------------------------------------------------------------------------
def fragment(model: str, profile: dict[str, Any] | None, sweep_result: dict[str, Any] | None) -> str:
    """The page's chart section: the latest profile's three charts and the latest sweep's, or what to run."""
    parts = []
    if profile is None:
        parts.append('<p class="note" id="no-profile">No profile of this model yet: run one above.</p>')
    else:
        corr = profile.get("time_correction") or {}
        trace = profile.get("trace_url")
        parts.append(
            f'<div id="profile-summary" data-e2e-p50="{_num(profile["e2e_ms"]["p50"])}" '
            f'data-layer-sum="{_num(profile["layer_sum_ms"])}">'
            f'<p>batch {profile["batch_size"]} · {escape(profile["execution_provider"])} · '
            f'{"fused" if profile["fused"] else "unfused"} · {profile["runs"]} runs · e2e p50 '
            f'{profile["e2e_ms"]["p50"]:.3f} ms · layers sum {profile["layer_sum_ms"]:.3f} ms'
            + (f' (traced {corr["traced_layer_sum_ms"]:.3f} ms, scaled ×{corr["scale"]})' if corr else "")
            + (f' · <a id="trace-link" href="{_a(trace)}" download>trace (JSON)</a> — open it in '
               '<a href="https://ui.perfetto.dev" rel="noreferrer">Perfetto</a> (Open trace file)' if trace else "")
            + '</p></div>')
        parts.append("<h3>Layer times</h3>" + layer_times(profile))
        parts.append("<h3>Share by kind: time vs MACs vs params</h3>" + by_kind(profile))
        roof = profile["roofline"]
        parts.append(f'<h3>Roofline ({roof["peak_gmacs_per_s"]:.1f} GMAC/s, {roof["bandwidth_gb_per_s"]:.1f} GB/s, '
                     f'ridge {roof["ridge_macs_per_byte"]:.2f} MACs/B)</h3>' + roofline(profile))
    if sweep_result is None:
        parts.append('<p class="note" id="no-sweep">No sweep of this architecture yet: run one above.</p>')
    else:
        parts.append(f'<h3>Sweep: {escape(sweep_result["arch"])}, batch {sweep_result["batch_size"]}, '
                     f'{escape(sweep_result["provider"])}</h3>' + sweep(sweep_result))
    return f'<div id="charts" data-model="{_a(model)}">' + "".join(parts) + "</div>"
