"""The run's outputs: bench/results/<date>.json, <date>.md (Markdown tables) and <date>.png
(latency percentiles against offered rate), plus latest.* copies for the README to link."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from bench.targets import Check

WORKLOAD_LABELS = {
    "ceiling": "Envoy direct_response (ceiling)",
    "login": "login",
    "refresh": "refresh",
    "verify": "verify (POST /api/v1/auth/verify)",
    "list_active": "list active orders",
    "get_order": "get order",
    "create_order": "create order",
    "orders_mix": "orders mix 70/20/10",
}


def _ms(value) -> str:
    return "—" if value is None else f"{value:g}"


def workloads_table(results: dict) -> list[str]:
    lines = ["| workload | offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | max ms | "
             "errors | × ceiling |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    workloads = results.get("workloads", {})
    ceiling = results.get("ceiling", {}).get("python")
    rows = [("ceiling", ceiling)] + [(name, workloads.get(name)) for name in WORKLOAD_LABELS
                                     if name != "ceiling"]
    for name, s in rows:
        if not s:
            continue
        offered = s.get("offered_rps", "max (closed loop)")
        lines.append(f"| {WORKLOAD_LABELS[name]} | {offered} | {s['achieved_rps']} | "
                     f"{_ms(s['p50_ms'])} | {_ms(s['p95_ms'])} | {_ms(s['p99_ms'])} | "
                     f"{_ms(s['max_ms'])} | {s['errors']} | {s.get('ratio_to_ceiling', '—')} |")
    for day in (workloads.get("pos_day_small"), workloads.get("pos_day")):
        if not day:
            continue
        lines.append(f"| mixed POS day ({day['users']} users, {day['sockets']} sockets) | "
                     f"{day['offered_rps']} | {day['achieved_rps']} | {_ms(day['p50_ms'])} | "
                     f"{_ms(day['p95_ms'])} | {_ms(day['p99_ms'])} | {_ms(day['max_ms'])} | "
                     f"{day['errors']} | {day.get('ratio_to_ceiling', '—')} |")
    return lines


CPU_COLUMNS = ("envoy", "auth", "staff", "orders", "realtime", "postgres", "redis",
               "bench generators", "bench supervisor")


def cpu_table(results: dict) -> list[str]:
    """Where the CPU went during each workload: percent of one core (the machine has N × 100)."""
    rows = []
    workloads = results.get("workloads", {})
    names = [n for n in WORKLOAD_LABELS if n != "ceiling"] + ["pos_day_small", "pos_day"]
    for name in names:
        s = workloads.get(name)
        if s and s.get("cpu_percent"):
            cells = [str(s["cpu_percent"].get(column, 0)) for column in CPU_COLUMNS]
            label = WORKLOAD_LABELS.get(name) or f"mixed POS day, {s.get('users')} users"
            rows.append(f"| {label} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["", "### Where the CPU went (% of one core; "
                f"{results['machine']['cores']} cores = {results['machine']['cores']}00 %)", "",
            "| workload | " + " | ".join(CPU_COLUMNS) + " |",
            "|---|" + "---:|" * len(CPU_COLUMNS)] + rows


def edge_check_table(results: dict) -> list[str]:
    """The unknown-field check's cost: Envoy CPU per request with and without it."""
    check = results.get("edge_check")
    if not check:
        return []
    out = ["", "## The unknown-field check at the edge", "",
           "The same requests, at the same moments, through two Envoys rendered from the edge's "
           "template and settings, with and without the check (bench/edge_check.py). CPU per "
           "request: a process's CPU time over a round divided by the requests it answered; "
           "services: auth, staff, orders, realtime, PostgreSQL and Redis over the round divided "
           "by every request of the round. Medians over the rounds.", "",
           "| request | rounds × requests | Envoy µs/request with check | without | check µs | "
           "% of the edge | services µs/request | % of the whole request | per-round check µs |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in check.values():
        out.append(f"| {s['request']} | {s['rounds']} × {s['requests_per_envoy'] // max(1, s['rounds'])} | "
                   f"{s['envoy_us_with_check']} | {s['envoy_us_without_check']} | {s['delta_us']} | "
                   f"{s['delta_percent_of_edge']} | {s['services_us']} | "
                   f"{s['delta_percent_of_request']} | {', '.join(map(str, s['delta_us_per_round']))} |")
    return out


def cpu_per_rpc_table(results: dict) -> list[str]:
    from bench import cpu_per_rpc

    result = results.get("cpu_per_rpc")
    if not result:
        return []
    return ["", "## The orders process's CPU per request, per RPC", "",
            f"Each RPC through the edge (JSON, transcoded), {result['requests_per_round']} requests "
            f"per round, {result['concurrency']} in flight, {result['rounds']} rounds, "
            f"{result['orders_processes']} orders process(es), mesh TLS "
            f"{'on' if result.get('mesh_tls') else 'off'}; the orders "
            f"processes' CPU time over the batch less its idle rate "
            f"({result['idle_us_per_s']} µs/s), per successful request; median of the rounds "
            "(bench/cpu_per_rpc.py)." + (f" Before: `{result['before_file']}`."
                                          if result.get("compared") else ""), ""
            ] + cpu_per_rpc.table(result)
def mesh_tls_table(results: dict) -> list[str]:
    """What mTLS on the internal hops costs: CPU per request and p99, with and without."""
    mesh = results.get("mesh_tls")
    if not mesh:
        return []
    out = ["", "## Mutual TLS inside the mesh", "",
           "The same requests, at the same moments, through the bench stack (MESH_TLS on: Envoy -> "
           "services and service -> service over mTLS) and a plaintext twin of it on the same "
           "PostgreSQL and Redis (bench/mesh_cost.py). CPU per request: Envoy and the four "
           "services of a stack over a round divided by the requests it answered. Medians over "
           "the rounds.", "",
           "| request | rate per stack | rounds × requests | CPU µs/request mTLS | plaintext | "
           "mTLS µs | % | p99 ms mTLS | plaintext | errors mTLS / plaintext | per-round mTLS µs |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for s in mesh.values():
        out.append(f"| {s['request']} | {s['rate_per_stack']:g}/s | {s['rounds']} × "
                   f"{s['requests_per_stack'] // max(1, s['rounds'])} | {s['cpu_us_mtls']} | "
                   f"{s['cpu_us_plaintext']} | {s['delta_us']} | {s['delta_percent']} | "
                   f"{s['p99_ms_mtls']} | {s['p99_ms_plaintext']} | "
                   f"{_errors(s.get('errors_mtls'))} / {_errors(s.get('errors_plaintext'))} | "
                   f"{', '.join(map(str, s['delta_us_per_round']))} |")
    return out


def _errors(kinds: dict | None) -> str:
    return ", ".join(f"{count} {kind}" for kind, count in (kinds or {}).items()) or "0"


def overload_table(results: dict) -> list[str]:
    overload = results.get("overload")
    if not overload:
        return []
    capacity = overload["capacity_rps"]
    runs = overload["runs"]
    out = ["", "## Past saturation: the orders mix at 2× and 4× capacity", "",
           f"Capacity {capacity:g} req/s ("
           + ("the highest step meeting p95 < 50 ms and p99 < 150 ms" if overload["capacity_measured"]
              else "assumed: a quick run has no step search") + "). "
           f"Goodput at 4× is **{runs['4x']['goodput_ratio']:.0%}** of capacity." if "4x" in runs
           else "", "",
           "| offered req/s | goodput req/s | of capacity | admitted p99 ms | refused | refused p99 / max ms | over 2 s | timeouts | without reason | error kinds |",
           "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for run in runs.values():
        out.append(f"| {run['offered_rps']:g} | {run['achieved_rps']} | {run['goodput_ratio']:.0%} | "
                   f"{run['ok_p99_ms']} | {run['refused']} | {run['refused_p99_ms']} / "
                   f"{run['refused_max_ms']} | {run['over_2s']} | {run['timeouts']} | "
                   f"{run['without_reason']} | {run['error_kinds']} |")
    return out


def markdown(results: dict, checks: list[Check]) -> str:
    machine = results["machine"]
    out = [f"# posmesh bench — {results['date']} ({results['mode']} run)", "",
           f"- Machine: {machine['cores']} cores, {machine['cpu_model']}, {machine['memory_gib']} GiB, "
           f"{machine['os']}, Python {machine['python']}; load average at start "
           f"{' '.join(map(str, machine['load_average_at_start']))}",
           f"- Command: `{results['command']}`",
           f"- Stack: {results['stack']['description']}",
           f"- Load: open loop (fixed arrival schedule, latency from the scheduled send time), "
           f"from {results['generator']['processes']} separate generator process(es), "
           f"HTTP/2 over TLS through Envoy, warm-up discarded. Ran in {results['elapsed_s']} s.",
           "", "## Targets", "", "| area | target | figure | verdict |", "|---|---|---|---|"]
    for check in checks:
        verdict = {"MET": "**MET**", "NOT MET": "**NOT MET**"}.get(check.verdict, check.verdict)
        out.append(f"| {check.area} | {check.target} | {check.figure} | {verdict} |")
    out += ["", "## HTTP workloads", ""] + workloads_table(results)
    ceiling = results.get("ceiling", {})
    if ceiling.get("h2load"):
        h = ceiling["h2load"]
        out += ["", f"Envoy's own ceiling with a C client (`{h.get('command', 'h2load')}`): "
                    f"{h.get('rps', '—')} req/s, mean {h.get('mean_ms', '—')} ms, "
                    f"{h.get('failed', '—')} failed. Ratios above use the Python generator's "
                    f"ceiling, the same client as every workload."]
    out += cpu_table(results)
    out += cpu_per_rpc_table(results)
    out += edge_check_table(results)
    out += mesh_tls_table(results)
    steps = results.get("workloads", {}).get("orders_mix_steps") or []
    if steps:
        out += ["", "## Orders mix: step search", "",
                "| offered req/s | achieved req/s | p50 ms | p95 ms | p99 ms | errors | meets p95<50, p99<150 |",
                "|---:|---:|---:|---:|---:|---:|---|"]
        for s in steps:
            out.append(f"| {s['offered_rps']} | {s['achieved_rps']} | {s['p50_ms']} | {s['p95_ms']} | "
                       f"{s['p99_ms']} | {s['errors']} | {'yes' if s['meets'] else 'no'} |")
    out += overload_table(results)
    for day in (results.get("workloads", {}).get("pos_day_small"),
                results.get("workloads", {}).get("pos_day")):
        if not day:
            continue
        out += ["", f"## Mixed POS day: {day['users']} users", "",
                f"{day['users']} simulated users in {day['restaurants']} restaurants "
                f"({day['per_restaurant']}), about one action per second each (exponential think "
                f"time), {day['sockets']} live sockets; {day['duration_s']} s measured. Order events "
                f"to the restaurant's sockets: p50 {day['event_p50_ms']} ms, p99 "
                f"{day['event_p99_ms']} ms over {day['event_deliveries']:,} deliveries, "
                f"{day['missing_events']} missing.", "",
                "| action | requests | p50 ms | p95 ms | p99 ms | errors |", "|---|---:|---:|---:|---:|---:|"]
        for kind, s in sorted(day["by_kind"].items()):
            out.append(f"| {kind} | {s['requests']} | {s['p50_ms']} | {s['p95_ms']} | {s['p99_ms']} | "
                       f"{s['errors']} |")
    ws = results.get("websockets", {})
    if ws:
        out += ["", "## WebSockets", ""]
        idle = ws.get("idle")
        if idle:
            route = "through Envoy"
            if idle.get("direct"):
                route = f"({idle['via_edge']:,} through Envoy, {idle['direct']:,} straight to the realtime port: "
                reasons = []
                if idle.get("edge_refused"):
                    reasons.append(f"Envoy refused {idle['edge_refused']:,} ({idle['edge_refusals']}) — its "
                                   f"overload manager stops accepting requests at 95 % of its 512 MiB heap")
                if idle["direct"] > idle.get("edge_refused", 0):
                    reasons.append(f"Envoy needs two descriptors per socket and the open-file limit is "
                                   f"{idle['open_file_limit']:,}")
                route += "; ".join(reasons) + ")"
            out.append(f"- Idle: {idle['held']:,} authenticated sockets {route} held by one realtime "
                       f"process (connected in {idle['connect_s']} s, {idle['failed']} failed); realtime "
                       f"RSS {idle['realtime_rss_before_mib']} → {idle['realtime_rss_after_mib']} MiB = "
                       f"**{idle['realtime_kib_per_connection']} KiB per connection**"
                       + (f" ({idle['realtime_kib_per_connection_marginal']} KiB each from 1,000 on)"
                          if idle.get("realtime_kib_per_connection_marginal") is not None else "")
                       + "; Envoy "
                       f"{idle['envoy_kib_per_connection']} KiB per connection.")
        for key in ("fanout_1000", "fanout_10000"):
            fan = ws.get(key)
            if fan:
                out.append(f"- Fan-out to {fan['sockets']:,} sockets ({fan['events']} events, create via "
                           f"{fan['via']}): create response → last socket p50 {fan['last_socket_p50_ms']} ms, "
                           f"p99 **{fan['last_socket_p99_ms']} ms**, max {fan['last_socket_max_ms']} ms; "
                           f"per delivery p50 {fan['delivery_p50_ms']} ms, p99 {fan['delivery_p99_ms']} ms; "
                           f"{fan['missing_deliveries']} missing, {fan['duplicate_deliveries']} duplicated, "
                           f"{fan['out_of_order']} out of order."
                           + (" CPU (% of a core) meanwhile: " + ", ".join(
                               f"{k} {v}" for k, v in fan["cpu_percent"].items()) if fan.get("cpu_percent") else ""))
        rate = ws.get("deliveries")
        if rate:
            out.append(f"- Throughput: {rate['deliveries']:,} deliveries in a burst of {rate['events']} events "
                       f"to {rate['sockets']:,} sockets: {rate['wall_per_second']:,}/s wall clock, realtime "
                       f"process CPU {rate['cpu_seconds']} s → **{rate['per_core']:,} deliveries/s per core**.")
    verification = results.get("verification")
    if verification:
        out += ["", "## Token verification in-process", "", "| check | p50 ms | p99 ms | p99.9 ms | per second, one core |",
                "|---|---:|---:|---:|---:|"]
        for key, label in (("verify", "signature, alg, iss/aud, expiry — token seen first time"),
                           ("verify_with_revocation", "+ revocation check (local set) — first time"),
                           ("verify_repeat", "signature … expiry — same token again (verifier's cache)"),
                           ("verify_with_revocation_repeat", "+ revocation check — same token again")):
            s = verification.get(key)
            if not s:
                continue
            out.append(f"| {label} | {s['p50_ms']} | {s['p99_ms']} | {s['p999_ms']} | {s['per_second_one_core']:,} |")
    notes = results.get("notes") or []
    if notes:
        out += ["", "## Notes", ""] + [f"- {note}" for note in notes]
    out += ["", "![latency against offered rate](" + results["plot_name"] + ")", ""]
    return "\n".join(out)


def _plot_goodput(ax, results: dict) -> None:
    """Goodput (successful requests/s) against offered rate for the orders mix: the step
    search, the target run and the overload runs at 2× and 4× capacity."""
    workloads = results.get("workloads", {})
    points = [s for s in (workloads.get("orders_mix_steps") or [])]
    overload = results.get("overload") or {}
    points += list((overload.get("runs") or {}).values())
    if not points:
        ax.set_visible(False)
        return
    points.sort(key=lambda s: s["offered_rps"])
    offered = [s["offered_rps"] for s in points]
    ax.plot(offered, [s["achieved_rps"] for s in points], "o-", label="goodput (2xx/s)")
    ax.plot([0, max(offered)], [0, max(offered)], color="grey", linewidth=0.8, linestyle=":",
            label="offered = goodput")
    capacity = overload.get("capacity_rps")
    if capacity:
        ax.axhline(capacity, color="grey", linestyle="--", linewidth=0.8)
        ax.axhline(0.9 * capacity, color="red", linestyle=":", linewidth=0.8)
        ax.text(0, capacity * 1.01, f" capacity {capacity:g}/s", fontsize=8, color="grey")
        ax.text(0, capacity * 0.91, " 90 % of capacity", fontsize=8, color="red")
        for run in (overload.get("runs") or {}).values():
            ax.annotate(f"{run['factor']}×: {run['goodput_ratio']:.0%}",
                        (run["offered_rps"], run["achieved_rps"]), textcoords="offset points",
                        xytext=(-10, 8), fontsize=8)
    ax.set_xlabel("offered rate (orders mix, requests/s)")
    ax.set_ylabel("goodput (successful requests/s)")
    ax.set_title("goodput against offered rate", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")


def plot(results: dict, path: Path) -> bool:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = results.get("workloads", {}).get("orders_mix_steps") or []
    fig, (ax, goodput_ax) = plt.subplots(1, 2, figsize=(14, 5.5), dpi=110,
                                         gridspec_kw={"width_ratios": [3, 2]})
    _plot_goodput(goodput_ax, results)
    if steps:
        rates = [s["offered_rps"] for s in steps]
        for key, style in (("p50_ms", "o-"), ("p95_ms", "s-"), ("p99_ms", "^-")):
            ax.plot(rates, [max(s[key], 0.1) for s in steps], style,
                    label=f"orders mix {key.split('_')[0]}")
    workloads = results.get("workloads", {})
    for name in ("login", "refresh", "verify", "list_active", "get_order", "create_order"):
        s = workloads.get(name)
        if s:
            ax.plot([s["offered_rps"]], [max(s["p95_ms"], 0.1)], "x", markersize=8)
            ax.annotate(f"{name} p95", (s["offered_rps"], max(s["p95_ms"], 0.1)),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
    for day in (workloads.get("pos_day_small"), workloads.get("pos_day")):
        if day:
            ax.plot([day["offered_rps"]], [max(day["p95_ms"], 0.1)], "D", markersize=6)
            ax.annotate(f"POS day {day['users']} users p95", (day["offered_rps"], max(day["p95_ms"], 0.1)),
                        textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.axhline(50, color="grey", linestyle="--", linewidth=0.8)
    ax.axhline(150, color="grey", linestyle=":", linewidth=0.8)
    ax.text(ax.get_xlim()[0], 52, " p95 target 50 ms", fontsize=8, color="grey")
    ax.text(ax.get_xlim()[0], 156, " p99 target 150 ms", fontsize=8, color="grey")
    ax.set_yscale("log")
    ax.set_xlabel("offered rate (requests/s, open loop)")
    ax.set_ylabel("latency (ms, from scheduled send)")
    machine = results["machine"]
    ax.set_title(f"posmesh through Envoy+TLS — {machine['cores']} cores, {results['date']} "
                 f"({results['mode']})", fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def write(results: dict, checks: list[Check], out_dir: Path, *, name: str,
          update_latest: bool = True) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    png = out_dir / f"{name}.png"
    results["plot_name"] = png.name
    results["targets"] = [c.as_dict() for c in checks]
    paths = {"json": out_dir / f"{name}.json", "md": out_dir / f"{name}.md"}
    if plot(results, png):
        paths["png"] = png
    paths["json"].write_text(json.dumps(results, indent=2, sort_keys=False, default=str) + "\n")
    paths["md"].write_text(markdown(results, checks))
    if update_latest:
        for kind, path in list(paths.items()):
            latest = out_dir / f"latest.{kind}"
            if kind == "md":
                latest.write_text(path.read_text().replace(f"]({png.name})", "](latest.png)"))
            else:
                shutil.copyfile(path, latest)
    return paths
