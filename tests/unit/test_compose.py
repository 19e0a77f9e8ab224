"""docker-compose.yml and the Dockerfile agree with the code. (No Docker engine here: these
checks read the files; nothing is built or run.)"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from posmesh.common.mail.smtp import SmtpTarget
from posmesh.common.settings import Settings
from stack import envoy_config

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("auth", "staff", "orders", "realtime")
SETTING_NAMES = {info.alias or name.upper() for name, info in Settings.model_fields.items()}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _port(addr: str) -> int:
    return int(addr.rpartition(":")[2])


def test_every_part_of_the_system_is_a_compose_service(compose):
    assert set(SERVICES) | {"postgres", "redis", "mail", "envoy", "envoy-config"} <= set(compose["services"])
    assert {"jaeger", "otel-collector"} & set(compose["services"]), "no trace backend"


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_runs_its_own_serve_command_from_the_one_image(compose, service):
    spec = compose["services"][service]

    assert spec["command"] == ["serve", service]
    assert spec["build"] == "."


def test_the_image_runs_the_posmesh_console_script():
    dockerfile = (ROOT / "Dockerfile").read_text()

    assert 'ENTRYPOINT ["posmesh"]' in dockerfile
    for source in re.findall(r"^COPY (\S+) ", dockerfile, flags=re.M):
        assert (ROOT / source).exists(), f"Dockerfile copies missing {source}"


def test_every_environment_variable_is_a_setting(compose):
    for name, spec in compose["services"].items():
        if spec.get("image", "").startswith("posmesh"):
            unknown = set(spec["environment"]) - SETTING_NAMES
            assert not unknown, f"{name} sets unknown variables {sorted(unknown)}"


@pytest.mark.parametrize("service", SERVICES)
def test_service_ports_match_the_settings_defaults(compose, service):
    spec = compose["services"][service]
    default = Settings.model_fields[f"{service}_addr"].default
    address = spec["environment"][f"{service.upper()}_ADDR"]

    assert _port(address) == _port(default)
    assert str(_port(default)) in spec["expose"]
    if service == "realtime":
        ws_default = Settings.model_fields["realtime_ws_addr"].default
        assert _port(spec["environment"]["REALTIME_WS_ADDR"]) == _port(ws_default)


def test_postgres_accepts_every_pool(compose):
    command = " ".join(compose["services"]["postgres"]["command"])
    limit = int(re.search(r"max_connections=(\d+)", command).group(1))
    per_process = (Settings.model_fields["db_pool_size"].default
                   + Settings.model_fields["db_max_overflow"].default)

    assert limit > 3 * per_process


def test_the_services_send_mail_to_the_dev_mail_server_that_keeps_it_in_the_data_dir(compose):
    mail = compose["services"]["mail"]
    listen = mail["command"][mail["command"].index("--listen") + 1]

    assert mail["command"][0] == "mail-server"
    assert SmtpTarget.from_url(compose["services"]["auth"]["environment"]["SMTP_URL"]) == SmtpTarget(
        "mail", _port(listen), use_tls=False, start_tls=False)
    assert str(_port(listen)) in mail["expose"]
    # `posmesh mail` in that container reads <POSMESH_DATA_DIR>/mail: the volume must be there.
    data_dir = re.search(r"POSMESH_DATA_DIR=(\S+)", (ROOT / "Dockerfile").read_text()).group(1)
    assert any(volume.endswith(f":{data_dir}/mail") for volume in mail["volumes"])


@pytest.mark.parametrize("service", ["auth", "staff"])
def test_the_mail_sending_services_have_a_mail_server_and_public_url(compose, service):
    environment = compose["services"][service]["environment"]

    assert environment["SMTP_URL"] and environment["MAIL_FROM"]
    assert environment["PUBLIC_BASE_URL"].startswith("https://")


def test_envoy_runs_the_config_the_render_step_writes(compose):
    render, envoy = compose["services"]["envoy-config"], compose["services"]["envoy"]
    out = render["command"][render["command"].index("--out") + 1]
    config = envoy["command"][envoy["command"].index("-c") + 1]

    assert render["command"][0] == "envoy-config"
    assert config == f"{out}/envoy.yaml"
    (volume,) = {v.split(":")[0] for v in render["volumes"]} & {v.split(":")[0] for v in envoy["volumes"]}
    mount = next(v.split(":")[1] for v in envoy["volumes"] if v.startswith(volume))
    assert config.startswith(mount + "/")
    assert render["environment"]["POSMESH_DATA_DIR"] == mount  # certificates land in the volume
    edge_port = int(render["environment"]["EDGE_PORT"])
    assert f"{edge_port}:{edge_port}" in envoy["ports"]
    assert envoy_config.TEMPLATE.exists()


def test_the_compose_environment_renders_a_valid_edge_config(compose, tmp_path):
    env = {key: value for key, value in compose["services"]["envoy-config"]["environment"].items()}
    env["POSMESH_DATA_DIR"] = str(tmp_path)  # the container's path does not exist here
    for name in ("MESH_CA_FILE", "MESH_CERT_FILE", "MESH_KEY_FILE", "POSMESH_SECRETS_DIR"):
        env.pop(name)  # nor do its secrets (/run/secrets): the mesh files are made in tmp_path
    settings = Settings(**env)

    envoy_config.validate(envoy_config.render(settings, tmp_path / "envoy"))


METRICS_JOBS = {"auth", "staff", "orders", "realtime", "envoy"}


def test_prometheus_scrapes_every_service_and_envoy_on_unpublished_metrics_ports(compose):
    config = yaml.safe_load((ROOT / "observability" / "prometheus" / "prometheus.yml").read_text())
    jobs = {job["job_name"]: [target for static in job["static_configs"]
                              for target in static["targets"]]
            for job in config["scrape_configs"]}
    assert set(jobs) == METRICS_JOBS
    env = compose["services"]["auth"]["environment"]
    render_env = compose["services"]["envoy-config"]["environment"]
    for job, (target,) in jobs.items():
        host, port = target.split(":")
        spec = compose["services"][host]
        setting = render_env["ENVOY_METRICS_ADDR"] if job == "envoy" else env[f"{job.upper()}_METRICS_ADDR"]
        assert _port(setting) == int(port), job
        assert port in spec["expose"], f"{job}'s metrics port is not on the compose network"
        assert not any(str(published).endswith(f":{port}") for published in spec.get("ports", [])), \
            f"{job}'s metrics port is published to the host"
    assert config["rule_files"] == ["rules.yml"]
    mount = compose["services"]["prometheus"]["volumes"][0].split(":")
    assert (ROOT / mount[0]).resolve() == (ROOT / "observability" / "prometheus").resolve()
    assert f"--config.file={mount[1]}/prometheus.yml" in compose["services"]["prometheus"]["command"]


def test_grafana_is_provisioned_with_the_prometheus_source_and_the_dashboard(compose):
    import json

    grafana = compose["services"]["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    provisioning = ROOT / next(host for host, inside in mounts.items()
                               if inside == "/etc/grafana/provisioning")
    source = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    (datasource,) = source["datasources"]
    assert datasource["url"] == "http://prometheus:9090"
    provider = yaml.safe_load((provisioning / "dashboards" / "posmesh.yml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    host_dir = ROOT / next(host for host, inside in mounts.items() if inside == dashboards_dir)
    dashboard = json.loads((host_dir / "posmesh.json").read_text())
    uids = {target["datasource"]["uid"] for panel in dashboard["panels"]
            for target in panel.get("targets", [])}
    assert uids == {datasource["uid"]}


def _secrets(spec: dict) -> dict[str, str]:
    """target (the file name in /run/secrets) -> the secret mounted there."""
    found = {}
    for item in spec.get("secrets", []):
        source, target = (item, item) if isinstance(item, str) else (item["source"], item.get("target", item["source"]))
        found[target] = source
    return found


@pytest.mark.parametrize("service", SERVICES)
def test_each_service_mounts_only_its_own_credentials_and_certificate(compose, service):
    spec = compose["services"][service]
    mounted = _secrets(spec)

    assert "DATABASE_URL" not in spec["environment"] and "REDIS_URL" not in spec["environment"]
    assert spec["environment"]["POSMESH_SECRETS_DIR"] == "/run/secrets"
    assert mounted["REDIS_URL"] == f"{service}-redis-url"
    assert mounted.get("DATABASE_URL") == (None if service == "realtime" else f"{service}-database-url")
    assert mounted["mesh-cert.pem"] == f"{service}-cert" and mounted["mesh-key.pem"] == f"{service}-key"
    assert spec["environment"]["MESH_KEY_FILE"] == "/run/secrets/mesh-key.pem"
    # Nothing of another service's, nor the superuser's.
    assert not {source for source in mounted.values()} & {"migrate-database-url", "postgres-password", "db-owner"}


def test_every_secret_file_is_one_posmesh_compose_secrets_writes(compose, tmp_path):
    from stack import compose_secrets

    written = {path.relative_to(tmp_path) for path in compose_secrets.write(tmp_path)}
    for name, secret in compose["secrets"].items():
        relative = Path(secret["file"]).relative_to(".posmesh/compose")
        assert relative in written, name
    assert ".posmesh/" in (ROOT / ".gitignore").read_text() and ".posmesh" in (ROOT / ".dockerignore").read_text()


def test_no_password_is_written_in_the_compose_file():
    text = (ROOT / "docker-compose.yml").read_text()

    assert "POSTGRES_PASSWORD:" not in text and "posmesh:posmesh@" not in text
