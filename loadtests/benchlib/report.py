"""Tables for the terminal and for the README, from the result dictionaries."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def _num(value: object, fmt: str, signed: bool = False) -> str:
    if not isinstance(value, int | float):
        return "-"
    text = format(value, fmt)
    return f"+{text}" if signed and value >= 0 else text


def _ratio(value: object) -> str:
    return f"{value:.2f}" if isinstance(value, int | float) else "n/a"


def _render(
    headers: Sequence[str], rows: Sequence[Sequence[str]], markdown: bool, left: int = 1
) -> str:
    """A table whose first `left` columns are labels (left-aligned), the rest numbers."""
    if markdown:
        lines = ["| " + " | ".join(headers) + " |"]
        lines.append(
            "|" + "|".join("---" if i < left else "---:" for i in range(len(headers))) + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in rows]
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            c.ljust(w) if i < left else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        )

    return "\n".join([line(headers), *(line(r) for r in rows)])


def throughput_table(result: Mapping[str, Any], markdown: bool = False) -> str:
    """The headline table: req/s, latency at c=1, CPU and memory per system."""
    config, systems, ratios = result["config"], result["systems"], result["ratios"]
    headers = [
        "system",
        f"req/s (c={config['connections']}, median of {config['repeat']})",
        "p50 ms (c=1)",
        "p99 ms (c=1)",
        "+p50 ms",
        "+p99 ms",
        "CPU us/req",
        "RSS MB",
    ]
    rows = [
        [
            entry["label"],
            _num(entry["rps_median"], ",.0f"),
            _num(entry["p50_ms"], ".3f"),
            _num(entry["p99_ms"], ".3f"),
            _num(entry.get("added_p50_ms"), ".3f", signed=True),
            _num(entry.get("added_p99_ms"), ".3f", signed=True),
            _num(entry["cpu_us_per_req"], ".1f"),
            _num(entry["rss_mb"], ".1f"),
        ]
        for entry in systems.values()
    ]
    parts = [_render(headers, rows, markdown)]
    ratio_line = (
        f"gateway/nginx req/s {_ratio(ratios['gateway_vs_nginx_rps'])}, "
        f"gateway/direct req/s {_ratio(ratios['gateway_vs_direct_rps'])}, "
        f"CPU per request gateway/nginx {_ratio(ratios['gateway_vs_nginx_cpu'])}"
    )
    if "gateway_vs_python_rps" in ratios:
        ratio_line += (
            f", compiled/Python path req/s {_ratio(ratios['gateway_vs_python_rps'])}"
            f" and CPU {_ratio(ratios['gateway_vs_python_cpu'])}"
            f", Python path/nginx req/s {_ratio(ratios.get('python_vs_nginx_rps'))}"
            f" and CPU {_ratio(ratios.get('python_vs_nginx_cpu'))}"
        )
    if "gateway_vs_floor_rps" in ratios:
        ratio_line += (
            f", gateway/floor req/s {_ratio(ratios['gateway_vs_floor_rps'])}"
            f" and CPU {_ratio(ratios['gateway_vs_floor_cpu'])}"
            f", floor/nginx req/s {_ratio(ratios['floor_vs_nginx_rps'])}"
            f" and CPU {_ratio(ratios['floor_vs_nginx_cpu'])}"
        )
    if "floor_compiled_vs_nginx_rps" in ratios:
        ratio_line += (
            f", compiled floor/nginx req/s {_ratio(ratios['floor_compiled_vs_nginx_rps'])}"
            f" and CPU {_ratio(ratios['floor_compiled_vs_nginx_cpu'])}"
        )
    if "gateway_vs_litellm_rps" in ratios:
        ratio_line += f", gateway/litellm req/s {_ratio(ratios['gateway_vs_litellm_rps'])}"
    for name in systems:
        if name.startswith("gateway-trace-"):
            ratio_line += (
                f", {name}/gateway req/s {_ratio(ratios.get(f'{name}_vs_gateway_rps'))}"
                f" and CPU {_num(ratios.get(f'{name}_added_cpu_us'), '.2f', signed=True)} us/req"
            )
    gateway = result["gateway"]
    split = gateway.get("variant_share") or {}
    split_text = ", ".join(f"{k} {v:.1%}" for k, v in split.items()) or "n/a"
    upstream = _num(systems["direct"].get("upstream_cpu_us_per_req"), ".1f")
    notes = [
        f"ratios (median of per-round ratios): {ratio_line}",
        f"gateway policy: {gateway['policy_summary']}; shadow {gateway['shadow']}; "
        f"drift sampling {gateway['drift']}; workers {gateway['workers']}; "
        f"request path {gateway.get('dataplane', '?')}",
        f"canary split seen in /metrics: {split_text}",
        f"upstream nginx CPU (same for every row): {upstream} us/req; "
        "+p50/+p99: added to direct at c=1 (median of per-round differences); "
        "CPU: proxy process tree, utime+stime",
    ]
    if not config["latency_runs"]:
        notes.append("latency runs skipped (--quick): p50/p99 columns are empty")
    if markdown:
        return parts[0] + "\n\n" + "\n".join(f"- {n}" for n in notes)
    return parts[0] + "\n\n" + "\n".join(notes)


def streaming_table(result: Mapping[str, Any], markdown: bool = False) -> str:
    """TTFB and total time per stream, and what the gateway adds per chunk."""
    headers = [
        "system",
        "tokens",
        "events",
        "TTFB p50 ms",
        "total p50 ms",
        "total p99 ms",
        "+TTFB ms",
        "+per chunk us",
        "CPU us/stream",
        "CPU us/chunk",
    ]
    rows: list[list[str]] = []
    for run in result["runs"]:
        for name, entry in run["systems"].items():
            rows.append(
                [
                    name,
                    str(run["tokens"]),
                    str(entry["events"]),
                    _num(entry["ttfb_p50_ms"], ".3f"),
                    _num(entry["total_p50_ms"], ".3f"),
                    _num(entry["total_p99_ms"], ".3f"),
                    _num(entry.get("added_ttfb_ms"), ".3f", signed=True),
                    _num(entry.get("added_per_chunk_us"), ".2f", signed=True),
                    _num(entry.get("cpu_us_per_stream"), ".0f"),
                    _num(entry.get("cpu_us_per_chunk"), ".2f"),
                ]
            )
    config = result["config"]
    notes = [
        f"{config['streams']} streams per system and length, c=1, interleaved; upstream: "
        "bundled simulator, 0 latency (all events written at once)",
        "+per chunk: (total p50 - direct total p50) / events; CPU: proxy process per stream",
    ]
    table = _render(headers, rows, markdown)
    if markdown:
        return table + "\n\n" + "\n".join(f"- {n}" for n in notes)
    return table + "\n\n" + "\n".join(notes)
