"""serve_load.py's summary: one row per headline number, a column per server, and the target."""

from __future__ import annotations

SERVERS = ("lmforge", "llama.cpp", "llama_cpp.Llama in-process")


def _seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _rows_for(result: dict, clients: int) -> dict[str, str]:
    """The headline numbers of one server's results, formatted, by row name."""
    rows = {}
    if c := result.get("concurrency"):
        one, many = c["one_client"], c["many_clients"]
        rows["1 client: tokens/s"] = f"{one['tok_s']:.1f}"
        rows[f"{clients} clients: tokens/s"] = f"{many['tok_s']:.1f}"
        rows[f"{clients} clients / 1 client"] = f"{c['ratio']:.2f}x"
        rows[f"{clients} clients: latency p50 / max (s)"] = (
            f"{many['latency_p50_s']:.2f} / {many['latency_max_s']:.2f}"
        )
        rows["tokens per request (asked for max_tokens)"] = (
            f"{one['mean_tokens_per_request']:.1f} / {many['mean_tokens_per_request']:.1f}"
        )
    if t := result.get("ttft_under_load"):
        rows["TTFT under load p50 / p99 (s)"] = (
            f"{_seconds(t['ttft_p50_s'])} / {_seconds(t['ttft_p99_s'])}"
        )
    if m := result.get("multiturn"):
        first, last = m["turns"][0], m["turns"][-1]
        rows["chat TTFT first / last turn (s)"] = (
            f"{_seconds(first['ttft_s'])} / {_seconds(last['ttft_s'])} "
            f"({m['last_over_first_ttft']:.2f}x)"
        )
        rows["chat prompt tokens first / last turn"] = (
            f"{first['prompt_tokens']} / {last['prompt_tokens']}"
        )
        rows["cached tokens, last turn"] = str(last["cached_tokens"])
    if d := result.get("decode"):
        rows["batch-1 decode tokens/s"] = f"{d['decode_tok_s']:.1f}"
    return rows


TARGETS = {
    "clients / 1 client": "lmforge >= 5x",
    "clients: tokens/s": "lmforge >= llama.cpp",
    "TTFT under load p50 / p99 (s)": "p99 < 0.5 s",
    "chat TTFT first / last turn (s)": "flat (prefix cache)",
}


def summary_rows(report: dict) -> list[dict]:
    clients = report["sizes"]["clients"]
    by_server = {name: _rows_for(report["results"].get(name, {}), clients) for name in SERVERS}
    names = list(dict.fromkeys(name for rows in by_server.values() for name in rows))
    return [
        {
            "metric": name,
            **{server: by_server[server].get(name, "-") for server in SERVERS},
            "target": next((t for key, t in TARGETS.items() if name.endswith(key)), ""),
        }
        for name in names
    ]


def markdown(report: dict) -> str:
    machine = report["machine"]
    bf16 = ", ".join(machine["amx"] + (["avx512_bf16"] if machine["avx512_bf16"] else []))
    header = (
        f"Machine: `{machine['cpu']}` (bf16 units: {bf16 or 'none'}), {machine['cores']} cores, "
        f"torch {machine['torch']}; load average {machine['load_average_at_start']:.1f} at the "
        f"start, {machine['load_average_at_end']:.1f} at the end."
    )
    loads = [
        f"{name} {s['load_average_before']:.1f} -> {s['load_average_after']:.1f}"
        for name, s in report["servers"].items()
        if "load_average_after" in s
    ]
    if loads:  # the host may be shared: how busy it was while each server ran
        header += " Load average before -> after each server: " + ", ".join(loads) + "."
    lines = [header, "", "| metric | " + " | ".join(SERVERS) + " | target |"]
    lines.append("|---" * (len(SERVERS) + 2) + "|")
    for row in report["summary"]:
        cells = [row["metric"], *(row[server] for server in SERVERS), row["target"]]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
