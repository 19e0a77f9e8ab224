"""Every target of the service issues, checked against one run's results."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable

OWASP_ARGON2 = {"memory_kib": 19456, "time_cost": 2, "parallelism": 1}
EDGE_CHECK_PERCENT = 5.0  # the unknown-field check's share of the edge's CPU (issue 10)


@dataclass
class Check:
    area: str
    target: str
    figure: str
    met: bool | None  # None: not measured in this run (says why in `figure`)

    @property
    def verdict(self) -> str:
        return "MET" if self.met else ("NOT RUN" if self.met is None else "NOT MET")

    def as_dict(self) -> dict:
        return {**asdict(self), "verdict": self.verdict}


def _get(results: dict, *path: str) -> Any:
    node: Any = results
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def _check(area: str, target: str, value: Any, passes: Callable[[Any], bool],
           figure: Callable[[Any], str]) -> Check:
    if value is None:
        return Check(area, target, "not measured in this run", None)
    return Check(area, target, figure(value), bool(passes(value)))


def evaluate(results: dict) -> list[Check]:
    w = results.get("workloads", {})
    quick = str(results.get("mode", "")).startswith("quick")
    checks: list[Check] = []
    add = checks.append

    # --- auth (issue 3) ---------------------------------------------------------------------
    argon = _get(results, "stack", "argon2")
    add(_check("auth", "argon2id at no less than OWASP's minimum (19 MiB, t=2, p=1)", argon,
               lambda a: all(a[k] >= v for k, v in OWASP_ARGON2.items()),
               lambda a: f"{a['memory_kib']} KiB, t={a['time_cost']}, p={a['parallelism']}"))
    login = w.get("login")
    add(_check("auth", "login p95 < 60 ms through Envoy+TLS", login,
               lambda s: s["p95_ms"] < 60, lambda s: f"p95 {s['p95_ms']} ms at {s['offered_rps']}/s"))
    add(_check("auth", "≥ 50 logins/s sustained, zero errors", login,
               lambda s: s["achieved_rps"] >= 50 and s["errors"] == 0,
               lambda s: f"{s['achieved_rps']}/s for {s['duration_s']} s, {s['errors']} errors"))
    refresh = w.get("refresh")
    add(_check("auth", "refresh p95 < 15 ms", refresh, lambda s: s["p95_ms"] < 15,
               lambda s: f"p95 {s['p95_ms']} ms at {s['offered_rps']}/s, {s['errors']} errors"))
    verification = results.get("verification")
    add(_check("auth", "token verification in-process p99 < 1 ms (keys parsed once; tokens seen first time)",
               _get(results, "verification", "verify"), lambda s: s["p99_ms"] < 1,
               lambda s: f"p99 {s['p99_ms']} ms ({s['per_second_one_core']}/s on one core)"))
    add(_check("auth", "with the revocation check (local set) p99 < 3 ms",
               _get(results, "verification", "verify_with_revocation"), lambda s: s["p99_ms"] < 3,
               lambda s: f"p99 {s['p99_ms']} ms"))
    del verification
    flood = results.get("signup_flood")
    add(_check("auth", "a registration flood at 20/s moves login p95 by < 20 % (medians of "
               "alternating rounds)", flood,
               lambda f: f["ratio"] is not None and f["ratio"] < 1.2 and f["login_errors"] == 0,
               lambda f: f"p95 {f['quiet_p95_ms']} → {f['flooded_p95_ms']} ms (×{f['ratio']}) at "
                         f"{f['login_rate']:g} logins/s, {f['rounds']} rounds of each; "
                         f"{f['login_errors']} login errors; registrations accepted "
                         f"{f['registrations']['accepted_per_second']}/s, shed "
                         f"{f['registrations']['shed'] or 'none'}, failed "
                         f"{f['registrations']['failed'] or 'none'}"))

    # --- orders (issue 5) -------------------------------------------------------------------
    mix = w.get("orders_mix")
    add(_check("orders", "mix at 800 req/s for 60 s: p95 < 50 ms", mix,
               lambda s: s["p95_ms"] < 50 and s["offered_rps"] >= 800 and (quick or s["duration_s"] >= 60),
               lambda s: f"p95 {s['p95_ms']} ms at {s['offered_rps']}/s for {s['duration_s']} s"
                         + (" (quick run: indicative)" if quick else "")))
    add(_check("orders", "mix: p99 < 150 ms", mix, lambda s: s["p99_ms"] < 150,
               lambda s: f"p99 {s['p99_ms']} ms"))
    add(_check("orders", "mix: zero errors", mix, lambda s: s["errors"] == 0,
               lambda s: f"{s['errors']} errors of {s['requests']}"
                         + (f" ({s['error_kinds']})" if s["errors"] else "")))
    best = w.get("orders_mix_max_rate")
    add(_check("orders", "highest mix rate meeting p95 < 50 ms and p99 < 150 ms ≥ 600 req/s",
               best, lambda b: b.get("rate", 0) >= 600,
               lambda b: f"{b['rate']} req/s" + (f" (next step {b['failed_at']}/s failed: {b['why']})"
                                                  if b.get("failed_at") else " (highest step tried)")))

    # --- overload (issue 12) ----------------------------------------------------------------
    over = results.get("overload") or {}
    for factor in (2, 4):
        run = (over.get("runs") or {}).get(f"{factor}x")
        measured = over.get("capacity_measured", False)
        where = f" at {factor}× capacity" + ("" if measured or run is None else
                                             " (capacity not measured: quick run, indicative)")
        add(_check("overload", f"goodput ≥ 90 % of capacity{where}", run,
                   lambda s: s["goodput_ratio"] >= 0.9,
                   lambda s: f"{s['achieved_rps']}/s of {over['capacity_rps']:g}/s = "
                             f"{s['goodput_ratio']:.0%} (offered {s['offered_rps']:g}/s)"))
        add(_check("overload", f"admitted requests p99 < 150 ms{where}", run,
                   lambda s: s["ok_p99_ms"] < 150, lambda s: f"p99 {s['ok_p99_ms']} ms"))
        add(_check("overload", f"refused requests answered within 20 ms (p99){where}", run,
                   lambda s: s["refused_p99_ms"] <= 20,
                   lambda s: f"{s['refused']} refused: p99 {s['refused_p99_ms']} ms, "
                             f"max {s['refused_max_ms']} ms"))
        add(_check("overload", f"no request over 2 s, 0 timeouts, every non-2xx with a reason{where}",
                   run, lambda s: s["over_2s"] == 0 and s["timeouts"] == 0 and s["without_reason"] == 0,
                   lambda s: f"{s['over_2s']} over 2 s (max {s['max_ms']} ms), {s['timeouts']} "
                             f"timeouts, {s['without_reason']} without a reason "
                             f"({s['error_kinds']})"))

    # --- every core (issue 12): one orders process against all, medians of alternating rounds
    spread = results.get("replicas") or {}
    for rate, medians in (spread.get("rates") or {}).items():
        one, many = (str(n) for n in spread["orders_processes"])
        add(_check("replicas", f"mix at {rate}/s: {many} orders processes get more through than 1",
                   medians, lambda m: (m["goodput_ratio"] or 0) > 1,
                   lambda m, one=one, many=many: (
                       f"{m[many]['achieved_rps']}/s vs {m[one]['achieved_rps']}/s "
                       f"(×{m['goodput_ratio']}); p95 {m[many]['p95_ms']} vs {m[one]['p95_ms']} "
                       f"ms, p99 {m[many]['p99_ms']} vs {m[one]['p99_ms']} ms; medians of "
                       f"{spread['rounds']} alternating rounds")))

    # --- orders CPU per request (issue 12) ----------------------------------------------------
    compared = _get(results, "cpu_per_rpc", "compared")
    hot = ("ListActiveOrders", "GetOrder", "CreateOrder")  # the orders mix's RPCs
    add(_check("orders", "CPU per request of the orders process ≥ 2× lower than before the CPU "
                         "work on the hot RPCs (list active, get, create)", compared,
               lambda c: all((c[rpc]["ratio"] or 0) >= 2 for rpc in hot),
               lambda c: "; ".join(f"{rpc} {c[rpc]['before_us']} → {c[rpc]['after_us']} µs "
                                   f"({c[rpc]['ratio']}×)" for rpc in hot)))

    # --- edge (issue 10) ----------------------------------------------------------------------
    check = results.get("edge_check")
    add(_check("edge", f"unknown-field check < {EDGE_CHECK_PERCENT:g} % of the edge's CPU per "
                       "transcoded request (same requests, with and without)", check,
               lambda c: all(s["errors"] == 0 and s["delta_percent_of_edge"] < EDGE_CHECK_PERCENT
                             for s in c.values()),
               lambda c: "; ".join(
                   f"{name}: +{s['delta_us']} µs of {s['envoy_us_without_check']} µs = "
                   f"{s['delta_percent_of_edge']} % (of the whole request "
                   f"{s['delta_percent_of_request']} %)" + (f", {s['errors']} errors" if s["errors"] else "")
                   for name, s in c.items()) + (" (quick run: indicative)" if quick else "")))

    # --- realtime (issue 6) -----------------------------------------------------------------
    ws = results.get("websockets", {})
    idle = ws.get("idle")
    if quick and idle and idle["held"] < 10_000:
        add(Check("realtime", "10,000 concurrent authenticated connections on one realtime process",
                  f"quick run holds {idle['held']}: run the full bench", None))
    else:
        add(_check("realtime", "10,000 concurrent authenticated connections on one realtime process",
                   idle, lambda s: s["held"] >= 10_000,
                   lambda s: f"{s['held']:,} held by one process ({s['failed']} failed"
                             + (f"; {s['via_edge']:,} through Envoy, {s['direct']:,} straight to its "
                                f"port because Envoy refused them (overload: heap cap) or was out of "
                                f"descriptors)" if s.get("direct") else ", all through Envoy)")))
    add(_check("realtime", "memory per idle connection < 20 KiB (RSS delta / N)", idle,
               lambda s: s["realtime_kib_per_connection"] < 20,
               lambda s: f"{s['realtime_kib_per_connection']} KiB (over {s['measured_over']} sockets)"))
    for sockets, limit in ((1000, 100), (10000, 500)):
        fan = ws.get(f"fanout_{sockets}")
        add(_check("realtime", f"event to {sockets:,} sockets: p99 < {limit} ms (create response → last socket)",
                   fan, lambda s, limit=limit: s["last_socket_p99_ms"] < limit and
                   s["missing_deliveries"] == 0 and s["sockets"] >= sockets,
                   lambda s: f"p99 {s['last_socket_p99_ms']} ms over {s['events']} events to "
                             f"{s['sockets']} sockets; {s['missing_deliveries']} missing"))
    rate = ws.get("deliveries")
    add(_check("realtime", "≥ 50,000 deliveries/s per core", rate,
               lambda s: s["per_core"] >= 50_000,
               lambda s: f"{s['per_core']:,}/s per core of the realtime process "
                         f"({s['wall_per_second']:,}/s wall, {s['deliveries']:,} deliveries)"))

    # --- the POS day (issue 12: the recovery plan's targets) ----------------------------------
    day = w.get("pos_day")
    add(_check("pos day", "1,000 users: 0 errors", day,
               lambda s: s["users"] >= 1000 and s["errors"] == 0,
               lambda s: f"{s['users']:,} users, {s['errors']} errors of {s['requests']:,}"
                         + (f" ({s['error_kinds']})" if s["errors"] else "")))
    add(_check("pos day", "1,000 users: p95 < 200 ms", day, lambda s: s["p95_ms"] < 200,
               lambda s: f"p95 {s['p95_ms']} ms at {s['achieved_rps']}/s"))
    add(_check("pos day", "1,000 users: events to sockets p99 < 500 ms", day,
               lambda s: s["event_p99_ms"] < 500 and s["missing_events"] == 0,
               lambda s: f"p99 {s['event_p99_ms']} ms, {s['missing_events']} missing"))

    # --- everything ---------------------------------------------------------------------------
    runs = {name: s for name, s in w.items() if isinstance(s, dict) and "errors" in s}
    for name in ("pos_day_small", "pos_day"):
        if w.get(name):
            runs[name] = w[name]
    total_errors = sum(s["errors"] for s in runs.values())
    add(Check("all", "zero errors in every workload", ", ".join(
        f"{name}: {s['errors']}" for name, s in runs.items() if s["errors"]) or
        f"0 errors over {sum(s['requests'] for s in runs.values()):,} requests", total_errors == 0))
    return checks
