"""A service's channel to another follows its certificate files: after a rotation the next call
connects with the new certificate, and stubs made before it keep working. The server side takes
a new certificate for the next handshake too. (A real in-process gRPC server over mutual TLS.)"""

from __future__ import annotations

import time

import grpc
from cryptography import x509
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from posmesh.common import mesh_tls
from posmesh.common.clients import MeshChannel
from stack import mesh_certs


class _Recorder(health.aio.HealthServicer):
    def __init__(self) -> None:
        super().__init__()
        self.peer_serials: list[int] = []

    async def Check(self, request, context):
        pem = context.auth_context()["x509_pem_cert"][0]
        self.peer_serials.append(x509.load_pem_x509_certificate(pem).serial_number)
        return health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)


def _serial(files: mesh_tls.MeshFiles) -> int:
    return x509.load_pem_x509_certificate(files.cert_file.read_bytes()).serial_number


async def test_a_rotation_is_used_by_the_next_call_on_the_same_stub(tmp_path, monkeypatch):
    monkeypatch.setattr(mesh_tls, "RELOAD_CHECK_SECONDS", 0.0)
    mesh_certs.ensure_mesh_certs(tmp_path, ("auth", "staff"))
    server = grpc.aio.server()
    recorder = _Recorder()
    health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
    port = server.add_secure_port("127.0.0.1:0", mesh_tls.server_credentials(
        mesh_certs.files(tmp_path, "auth")))
    await server.start()
    channel = MeshChannel(f"127.0.0.1:{port}", "auth", mesh_tls.ReloadingCredentials(
        mesh_certs.files(tmp_path, "staff")))
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        first = _serial(mesh_certs.files(tmp_path, "staff"))
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
        time.sleep(0.01)  # a new mtime even on coarse clocks
        mesh_certs.rotate(tmp_path, ("auth", "staff"))
        second = _serial(mesh_certs.files(tmp_path, "staff"))
        await stub.Check(health_pb2.HealthCheckRequest(), timeout=5)
    finally:
        await channel.close()
        await server.stop(None)

    assert recorder.peer_serials == [first, second]


async def test_a_plaintext_channel_gets_no_answer_from_a_mesh_server(tmp_path):
    mesh_certs.ensure_mesh_certs(tmp_path, ("auth",))
    server = grpc.aio.server()
    recorder = _Recorder()
    health_pb2_grpc.add_HealthServicer_to_server(recorder, server)
    port = server.add_secure_port("127.0.0.1:0", mesh_tls.server_credentials(
        mesh_certs.files(tmp_path, "auth")))
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            try:
                await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(),
                                                                timeout=2)
                answered = True
            except grpc.aio.AioRpcError as error:
                answered = False
                assert error.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await server.stop(None)

    assert not answered and recorder.peer_serials == []
