"""What the Kubernetes manifests (deploy/k8s/) derive from the code: who calls whom, on which
ports, and the NetworkPolicies that allow exactly that.

    python -m stack.k8s          rewrite deploy/k8s/base/networkpolicies.yaml

`service_calls()` is the one place the service-to-service edges come from: what the code wires
(every `clients.channel("<service>")` in services/<svc>/, plus the aggregated health check's
fan-out). The per-RPC caller table (posmesh/common/callers.py) allows more (`caller_table_edges()`:
every service may ask every other's health), so the policies keep to the wiring; a test checks
the wiring never goes beyond the table. tests/unit/test_k8s_manifests.py fails when the committed
file is not what this module renders.
"""

from __future__ import annotations

import ast
from pathlib import Path

import yaml

from posmesh.common import clients
from posmesh.common.settings import Settings
from stack.envoy_config import HEALTH_CLUSTER_SERVICES

ROOT = Path(__file__).resolve().parent.parent
K8S_DIR = ROOT / "deploy" / "k8s"
POLICIES_FILE = K8S_DIR / "base" / "networkpolicies.yaml"
SERVICES = clients.SERVICES
EDGE = "edge"
MIGRATIONS = "migrations"
NAME_LABEL = "app.kubernetes.io/name"
# The edge's listener in its pod (its LoadBalancer Service maps 443 to it).
EDGE_PORT = Settings.model_fields["edge_port"].default
POSTGRES_PORT, REDIS_PORT = 5432, 6379
# Outside the cluster, so reached by address: the base's guess, which each overlay replaces in
# every policy labelled BACKING_LABEL (at egress[0]) with where PostgreSQL and Redis really are.
BACKING_CIDR = "10.0.0.0/8"
BACKING_LABEL = "posmesh.dev/backing-egress"
OTLP_PORT = 4317
SMTP_PORTS = (25, 465, 587)
DATABASE_SERVICES = ("auth", "staff", "orders")
MAIL_SERVICES = ("auth", "staff")  # each has a mail outbox and its sender


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def grpc_port(service: str) -> int:
    return _port(Settings.model_fields[f"{service}_addr"].default)


def websocket_port() -> int:
    return _port(Settings.model_fields["realtime_ws_addr"].default)


def _channel_targets(source: str) -> set[str]:
    """Services named in `clients.channel("<service>", ...)` calls of one module."""
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr == "channel" and isinstance(node.func.value, ast.Name)
                and node.func.value.id == "clients" and node.args
                and isinstance(node.args[0], ast.Constant)):
            targets.add(node.args[0].value)
    return targets


def rpc_clients() -> dict[str, set[str]]:
    """caller -> the services it opens a `clients.channel(...)` to in services/<caller>/."""
    calls: dict[str, set[str]] = {service: set() for service in SERVICES}
    for service in SERVICES:
        for module in sorted((ROOT / "services" / service).glob("*.py")):
            targets = _channel_targets(module.read_text())
            unknown = targets - set(SERVICES)
            if unknown:
                raise ValueError(f"{module} opens a channel to unknown {sorted(unknown)}")
            calls[service] |= targets - {service}
    return calls


def service_calls() -> dict[str, set[str]]:
    """caller -> the services whose gRPC port it connects to.

    - RPC clients: every `clients.channel("x")` in services/<caller>/ (its main wires them);
    - the aggregated health (posmesh.common.health.SystemHealth): each service answering it
      for the edge (HEALTH_CLUSTER_SERVICES) checks every service's standard health.
    A NetworkPolicy allows ports, not methods: the RPCs on an allowed edge are the caller
    table's business (mTLS and per-RPC caller identity), not the network's.
    """
    calls = rpc_clients()
    for service in HEALTH_CLUSTER_SERVICES:
        calls[service] |= set(SERVICES)
    for service in SERVICES:
        calls[service].discard(service)  # its own port is local to the pod
    return calls


def served_by(method: str) -> set[str]:
    """The services whose processes serve an RPC path: its package's service, or every one for
    what posmesh/common/server.py adds to each (health, reflection, the aggregated health)."""
    package = method.split("/")[1].split(".")
    if package[0] == "posmesh" and package[1] in SERVICES:
        return {package[1]}
    return set(SERVICES)


def caller_table_edges(*, own_rpcs_only: bool = False) -> dict[str, set[str]]:
    """caller -> the services it may call at least one RPC of, by the caller table
    (posmesh/common/callers.py). Wider than service_calls(): every service may check every
    other's health and read auth's keys, so the table alone would open every service to every
    other; the policies keep to what the code wires, and a test keeps that within this.
    `own_rpcs_only`: count only the callee's own API (not health or reflection, which every
    process serves)."""
    from posmesh.common import callers

    edges: dict[str, set[str]] = {service: set() for service in SERVICES}
    for method, allowed in callers.CALLERS.items():
        servers = served_by(method)
        if own_rpcs_only and len(servers) != 1:
            continue
        for caller in set(allowed) & set(SERVICES):
            edges[caller] |= servers - {caller}
    return edges


def _pods(name: str) -> dict:
    return {"podSelector": {"matchLabels": {NAME_LABEL: name}}}


def _tcp(*ports: int) -> list[dict]:
    return [{"protocol": "TCP", "port": port} for port in ports]


def _policy(name: str, pod: dict, *, ingress: list[dict] | None, egress: list[dict] | None,
            backing: bool = False) -> dict:
    spec: dict = {**pod, "policyTypes": []}
    if ingress is not None:
        spec["policyTypes"].append("Ingress")
        spec["ingress"] = ingress
    if egress is not None:
        spec["policyTypes"].append("Egress")
        spec["egress"] = egress
    metadata: dict = {"name": name}
    if backing:
        metadata["labels"] = {BACKING_LABEL: "true"}
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": metadata, "spec": spec}


DNS_EGRESS = {
    "to": [{"namespaceSelector": {}, "podSelector": {"matchLabels": {"k8s-app": "kube-dns"}}}],
    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}],
}


def network_policies() -> list[dict]:
    """Default deny both ways, then: the world -> the edge; the edge -> the services' public
    ports; caller -> callee gRPC per service_calls(); services (and the migrations Job) ->
    PostgreSQL/Redis; mail senders -> SMTP; everyone -> DNS and the trace collector."""
    calls = service_calls()
    callers_of = {service: sorted(c for c, callees in calls.items() if service in callees)
                  for service in SERVICES}
    backing = {"ipBlock": {"cidr": BACKING_CIDR}}
    policies = [_policy("default-deny", {"podSelector": {}}, ingress=[], egress=[])]
    policies.append(_policy(
        "edge", _pods(EDGE),
        ingress=[{"ports": _tcp(EDGE_PORT)}],  # from anywhere: it is the public entrance
        egress=[DNS_EGRESS,
                *({"to": [_pods(s)], "ports": _tcp(grpc_port(s))} for s in SERVICES),
                {"to": [_pods("realtime")], "ports": _tcp(websocket_port())},
                {"ports": _tcp(OTLP_PORT)}]))
    for service in SERVICES:
        ingress = [{"from": [_pods(EDGE), *(_pods(c) for c in callers_of[service])],
                    "ports": _tcp(grpc_port(service))}]
        if service == "realtime":
            ingress.append({"from": [_pods(EDGE)], "ports": _tcp(websocket_port())})
        # The backing stores first: the overlays set their address at egress[0].
        egress = [{"to": [backing], "ports": _tcp(*(
                      (POSTGRES_PORT, REDIS_PORT) if service in DATABASE_SERVICES
                      else (REDIS_PORT,)))},
                  DNS_EGRESS,
                  *({"to": [_pods(callee)], "ports": _tcp(grpc_port(callee))}
                    for callee in sorted(calls[service])),
                  {"ports": _tcp(OTLP_PORT)}]
        if service in MAIL_SERVICES:
            egress.append({"ports": _tcp(*SMTP_PORTS)})
        policies.append(_policy(service, _pods(service), ingress=ingress, egress=egress,
                                backing=True))
    policies.append(_policy(
        MIGRATIONS, _pods(MIGRATIONS), ingress=[],
        egress=[{"to": [backing], "ports": _tcp(POSTGRES_PORT)}, DNS_EGRESS], backing=True))
    return policies


HEADER = """\
# Generated by `python -m stack.k8s` from the code (stack/k8s.py: service_calls()); do not edit.
# Who may call whom (gRPC port): {edges}
"""


class _NoAliases(yaml.SafeDumper):
    def ignore_aliases(self, data) -> bool:
        return True


def render_policies() -> str:
    edges = "; ".join(f"{caller} -> {', '.join(sorted(callees))}"
                      for caller, callees in service_calls().items())
    return HEADER.format(edges=edges) + yaml.dump_all(
        network_policies(), Dumper=_NoAliases, sort_keys=False, default_flow_style=False,
        width=100)


def main() -> None:
    POLICIES_FILE.write_text(render_policies())
    print(POLICIES_FILE.relative_to(ROOT))


if __name__ == "__main__":
    main()
