"""`posmesh`: run the whole system, one service, or render the edge config.

    posmesh run [--demo]         every service, embedded PostgreSQL/Redis and Envoy; Ctrl-C stops
    posmesh serve auth           one service (what a container runs)
    posmesh keys rotate|list     publish a new signing key (it signs after a lead time) / list keys
    posmesh certs rotate|list    new mesh certificates for every identity (picked up live) / list
    posmesh migrate              database roles (with DATABASE_URL's superuser) and migrations
    posmesh compose-secrets      the secret files docker-compose.yml mounts (.posmesh/compose)
    posmesh envoy-config         render and validate the Envoy config, print its path
    posmesh prometheus-config    a prometheus.yml scraping every metrics port, and the rules
    posmesh probe <service>      its standard health over mTLS: exit 0 when SERVING (k8s probes)
    posmesh mail [show N | last] the mail the dev mail server stored (newest first)
    posmesh mail-server          the dev mail server alone (what `posmesh run` starts)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import signal
import sys
from pathlib import Path
from typing import Awaitable, Callable

SERVICES = ("auth", "staff", "orders", "realtime")


def serve(service: str) -> None:
    import uvloop

    from posmesh.common import clients, telemetry
    from posmesh.common.settings import get_settings

    settings = get_settings()
    telemetry.setup(service, settings)
    clients.use_identity(service)
    module = importlib.import_module(f"services.{service}.main")
    uvloop.run(module.serve(settings))


def manage_keys(command: str) -> None:
    """Key files are shared with the running auth service, which picks changes up within a
    second; the lock in services.auth.keys makes this safe while it runs."""
    import time

    from posmesh.common.settings import get_settings
    from services.auth import keys

    settings = get_settings()
    if command == "rotate":
        keys.ensure_keys(settings)
        new = keys.rotate(settings)
        print(f"published key {new.kid}; it signs from "
              f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(new.sign_from))}")
    for info in keys.ensure_keys(settings):
        print(f"{info.kid}  {info.alg}  published "
              f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(info.publish_at))}  signs from "
              f"{time.strftime('%Y-%m-%d %H:%M:%SZ', time.gmtime(info.sign_from))}")


def manage_certs(command: str) -> None:
    """Mesh certificates (posmesh/common/mesh_tls.py): made if missing, or all renewed. Running
    processes load changed files before their next handshake; nothing restarts."""
    import datetime as dt

    from cryptography import x509

    from posmesh.common import mesh_tls
    from posmesh.common.settings import get_settings
    from stack import mesh_certs

    folder = mesh_tls.mesh_dir(get_settings())
    if command == "rotate":
        renewed = mesh_certs.rotate(folder)
        print(f"new certificates for {', '.join(renewed)} in {folder}; running processes use "
              "them for new connections within a couple of seconds")
    else:
        mesh_certs.ensure_mesh_certs(folder)
    for name in mesh_tls.IDENTITIES:
        cert = x509.load_pem_x509_certificate(mesh_certs.files(folder, name).cert_file.read_bytes())
        left = cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc)
        print(f"{mesh_tls.spiffe_id(name):45}  serial {cert.serial_number:x}  "
              f"expires {cert.not_valid_after_utc:%Y-%m-%d %H:%MZ} ({left.days} days)")


def migrate(secrets_dir: Path) -> None:
    """What `posmesh run` does before the services start, for a deployment: the roles (with
    DATABASE_URL, a superuser's), then every migration as the owner role."""
    from posmesh.common.settings import get_settings
    from stack import db_roles

    settings = get_settings()
    if not settings.database_url:
        raise SystemExit("DATABASE_URL (a superuser's) is needed to create the roles")
    roles = db_roles.bootstrap(settings.database_url, secrets_dir)
    db_roles.migrate(roles.owner_url)
    print(f"roles {', '.join(db_roles.role_names(db_roles.make_url(settings.database_url).database or '').values())} "
          "ready; every schema migrated")


def mail(args: argparse.Namespace) -> int:
    from posmesh.common.settings import get_settings
    from stack import mail_cli

    folder = get_settings().data_dir / "mail"
    if args.mail_command == "show":
        return mail_cli.show_mail(folder, number=args.number, to=args.to)
    if args.mail_command == "last":
        return mail_cli.show_mail(folder, to=args.last_to or args.to)
    return mail_cli.list_mail(folder, to=args.to, limit=args.limit)


def mail_server(listen: str, folder: Path | None) -> None:
    from posmesh.common.settings import get_settings
    from stack import mail_server as server

    server.main(listen, folder or get_settings().data_dir / "mail")


def probe(service: str, timeout: float) -> int:
    """The standard grpc.health.v1 Check of `service` at its address, over mutual TLS as
    `service` itself: 0 when SERVING. A Kubernetes exec probe (deploy/k8s/): the kubelet's own
    gRPC probe speaks plaintext, which a mesh service refuses."""
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from posmesh.common import mesh_tls
    from posmesh.common.settings import get_settings

    settings = get_settings()
    target = settings.service_addr(service)
    if settings.mesh_tls:
        credentials = mesh_tls.channel_credentials(mesh_tls.files_for(settings, service).read())
        channel = grpc.secure_channel(target, credentials, options=[
            ("grpc.ssl_target_name_override", mesh_tls.server_name(service))])
    else:
        channel = grpc.insecure_channel(target)
    with channel:
        try:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                             timeout=timeout)
        except grpc.RpcError as exc:
            print(f"{service} at {target}: {exc.code().name}", file=sys.stderr)
            return 1
    status = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
    print(f"{service} at {target}: {status}")
    return 0 if reply.status == health_pb2.HealthCheckResponse.SERVING else 1


def envoy_config(out: Path | None, check: bool) -> None:
    from posmesh.common.settings import get_settings
    from stack import envoy_config as edge

    settings = get_settings()
    path = edge.render(settings, out or settings.data_dir / "envoy")
    if check:
        edge.validate(path)
    print(path)


def prometheus_config(out: Path | None) -> None:
    from posmesh.common.settings import get_settings
    from stack import prometheus_config as prometheus

    settings = get_settings()
    print(prometheus.render(settings, out or settings.data_dir / "prometheus"))


async def run(on_ready: Callable[..., Awaitable[None]] | None = None) -> int:
    """Start the stack, report where it is, and supervise it until a signal or a child dies.
    `on_ready(stack)` runs once everything answers (e.g. seeding demo data)."""
    from posmesh.common.settings import get_settings
    from stack.supervisor import ChildDied, Stack

    stack = Stack(get_settings(), echo=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    print("posmesh: starting PostgreSQL, Redis, the dev mail server, auth, staff, orders, realtime "
          "and Envoy...", flush=True)
    try:
        await stack.start()
    except ChildDied as died:
        _loud(f"{died.child.name} died during start-up (exit code {died.returncode})",
              died.child.last_lines())
        return 1
    except Exception as exc:
        _loud("the stack failed to start", str(exc))
        return 1
    if on_ready is not None:
        await on_ready(stack)
    ca = _relative(stack.ca_file)
    print(
        f"\nposmesh is up in {stack.started_in:.1f}s\n"
        f"  API (TLS, HTTP/2 and HTTP/1.1)  {stack.edge_url}\n"
        f"  health                          curl --cacert {ca} {stack.edge_url}/api/v1/health\n"
        f"  WebSocket                       wss://localhost:{stack.settings.edge_port}/ws/pos/<restaurant_id>\n"
        f"  Envoy admin (this machine only) http://127.0.0.1:{stack.settings.envoy_admin_port}\n"
        f"{_metrics_banner(stack)}"
        f"  dev CA certificate              {ca}\n"
        f"  processes                       "
        + ", ".join(f"{service} ×{len(stack.replicas(service))}" for service in SERVICES)
        + " (AUTH_REPLICAS, STAFF_REPLICAS, ORDERS_REPLICAS)\n"
        f"  logs                            {_relative(stack.data_dir / 'logs')}/\n"
        f"{_mail_banner(stack)}"
        f"Stop with Ctrl-C (or SIGTERM).\n",
        flush=True,
    )
    failed = asyncio.ensure_future(stack.wait_failed())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait({failed, stopped}, return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if failed.done():
        died = failed.result()
        _loud(f"{died.child.name} exited unexpectedly (exit code {died.returncode}); "
              "stopping everything", died.child.last_lines())
        code = 1
    else:
        failed.cancel()
        print("\nposmesh: stopping...", flush=True)
    await stack.stop()
    print("posmesh: stopped.", flush=True)
    return code


def _mail_banner(stack) -> str:
    from posmesh.common.mail.smtp import SmtpTarget

    target = SmtpTarget.from_url(stack.settings.smtp_url).redacted()
    if stack.mail_port is None:
        return f"  mail                            sent to {target} (SMTP_URL)\n"
    command = _relative(Path(sys.executable).parent / "posmesh")
    return (f"  mail (dev server)               {target}: nothing leaves, every mail is kept in "
            f"{_relative(stack.mail_dir)}/\n"
            f"  read mail                       {command} mail   (then {command} mail show 1, "
            f"or {command} mail last --to ADDRESS)\n")


async def seed_demo(stack) -> None:
    import httpx

    from stack import demo, demo_devices

    try:
        if stack.mail_port is None:
            raise demo.DemoError("the demo verifies its logins with the embedded dev mail server; "
                                 "unset SMTP_URL to seed it")
        restaurant_id, logins = await demo.seed(stack.edge_url, stack.ca_file, stack.data_dir,
                                                stack.mail_dir)
        till = await demo_devices.pair_demo_devices(stack.edge_url, stack.ca_file,
                                                    stack.data_dir, restaurant_id, logins)
    except (demo.DemoError, httpx.HTTPError, OSError) as exc:
        _loud("demo seeding failed (the stack keeps running)", str(exc))
        return
    print(demo.describe(stack.edge_url, _relative(stack.ca_file), restaurant_id, logins,
                        _relative(stack.mail_dir)), flush=True)
    print(demo_devices.describe(stack.edge_url, _relative(stack.ca_file), till), flush=True)


def _loud(headline: str, details: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\nposmesh: {headline}\n{bar}\n{details}\n{bar}", file=sys.stderr, flush=True)


def _metrics_banner(stack) -> str:
    """Where Prometheus scrapes (docs/observability.md), and a config that scrapes them all."""
    from stack import prometheus_config

    targets = stack.metrics_targets()
    config = prometheus_config.render(stack.settings, stack.data_dir / "prometheus",
                                      targets=targets)
    lines = [f"  metrics ({job}){' ' * (23 - len(job))} "
             + " ".join(f"http://{target}/metrics" for target in addrs)
             for job, addrs in targets.items()]
    return "\n".join(lines) + (f"\n  Prometheus config               prometheus "
                               f"--config.file={_relative(config)}\n")


def _relative(path: Path) -> str:
    try:
        return str(path.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="posmesh", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run_parser = commands.add_parser("run", help="run the whole system locally")
    run_parser.add_argument("--demo", action="store_true",
                            help="seed a demo restaurant, staff and menu, and print the logins")
    serve_parser = commands.add_parser("serve", help="run one service")
    serve_parser.add_argument("service", choices=SERVICES)
    keys_parser = commands.add_parser("keys", help="manage the auth service's signing keys")
    keys_commands = keys_parser.add_subparsers(dest="keys_command", required=True)
    keys_commands.add_parser(
        "rotate", help="publish a new signing key now; it signs after JWT_KEY_PUBLISH_LEAD_SECONDS")
    keys_commands.add_parser("list", help="show every key with its publish and signing times")
    certs_parser = commands.add_parser("certs", help="the mesh certificates (mutual TLS inside)")
    certs_commands = certs_parser.add_subparsers(dest="certs_command", required=True)
    certs_commands.add_parser("rotate", help="a new key and certificate for every identity now; "
                              "running processes pick them up without a restart")
    certs_commands.add_parser("list", help="every identity's certificate (made if missing)")
    migrate_parser = commands.add_parser(
        "migrate", help="create the database roles and run every migration as the owner role")
    migrate_parser.add_argument("--secrets-dir", type=Path, default=None,
                                help="where the roles' db-<role>.password files are (made if "
                                     "missing; default POSMESH_SECRETS_DIR or <data dir>/secrets)")
    compose_parser = commands.add_parser(
        "compose-secrets", help="write the secret files docker-compose.yml mounts")
    compose_parser.add_argument("--out", type=Path, default=Path(".posmesh/compose"))
    probe_parser = commands.add_parser(
        "probe", help="exit 0 when a service's standard health answers SERVING (over mTLS)")
    probe_parser.add_argument("service", choices=SERVICES)
    probe_parser.add_argument("--timeout", type=float, default=2.0, help="seconds (default 2)")
    config_parser = commands.add_parser("envoy-config", help="render (and validate) the Envoy config")
    config_parser.add_argument("--out", type=Path, help="folder for envoy.yaml (default <data dir>/envoy)")
    config_parser.add_argument("--no-validate", action="store_true", help="skip `envoy --mode validate`")
    prometheus_parser = commands.add_parser(
        "prometheus-config", help="write a prometheus.yml (every metrics target) and the rules")
    prometheus_parser.add_argument("--out", type=Path,
                                   help="folder for prometheus.yml (default <data dir>/prometheus)")
    mail_parser = commands.add_parser(
        "mail", help="list the mail the dev mail server stored (newest first), or show one")
    mail_parser.add_argument("--to", help="only mail to this address")
    mail_parser.add_argument("--limit", type=int, default=20, help="how many to list (default 20)")
    mail_commands = mail_parser.add_subparsers(dest="mail_command")
    show_parser = mail_commands.add_parser(
        "show", help="print the N-th of the list (1 = newest; with --to, of the mail to that address)")
    show_parser.add_argument("number", type=int)
    last_parser = mail_commands.add_parser("last", help="print the newest mail")
    last_parser.add_argument("--to", dest="last_to", help="the newest mail to this address")
    server_parser = commands.add_parser(
        "mail-server", help="run the dev mail server: accepts every mail, stores it for `posmesh mail`")
    server_parser.add_argument("--listen", default="127.0.0.1:1025",
                               help="HOST:PORT to accept SMTP on (default 127.0.0.1:1025)")
    server_parser.add_argument("--maildir", type=Path, help="where to store mail (default <data dir>/mail)")
    args = parser.parse_args(argv)

    if args.command == "serve":
        serve(args.service)
    elif args.command == "keys":
        manage_keys(args.keys_command)
    elif args.command == "migrate":
        from posmesh.common.settings import get_settings

        settings = get_settings()
        migrate(args.secrets_dir or settings.secrets_dir or settings.data_dir / "secrets")
    elif args.command == "compose-secrets":
        from stack import compose_secrets

        for path in compose_secrets.write(args.out):
            print(path)
    elif args.command == "certs":
        manage_certs(args.certs_command)
    elif args.command == "probe":
        sys.exit(probe(args.service, args.timeout))
    elif args.command == "envoy-config":
        envoy_config(args.out, check=not args.no_validate)
    elif args.command == "prometheus-config":
        prometheus_config(args.out)
    elif args.command == "mail":
        sys.exit(mail(args))
    elif args.command == "mail-server":
        mail_server(args.listen, args.maildir)
    else:
        import uvloop

        sys.exit(uvloop.run(run(on_ready=seed_demo if args.demo else None)))


if __name__ == "__main__":
    main()
