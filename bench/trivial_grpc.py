"""The floor: a trivial grpc.aio unary RPC (empty bytes in, empty bytes out, no interceptor), on
uvloop as the services run, in a process of its own. `start_server()` runs
`python -m bench.trivial_grpc PORT`; `drive(load)` calls it from a generator process."""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

METHOD = "/bench.Trivial/Call"


@dataclass(frozen=True)
class TrivialLoad:
    address: str
    requests: int
    concurrency: int


def drive(load: TrivialLoad) -> int:
    """Calls the RPC `requests` times, `concurrency` at a time; returns the successful calls."""
    import grpc
    import uvloop

    async def main() -> int:
        async with grpc.aio.insecure_channel(load.address) as channel:
            call = channel.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
            remaining = iter(range(load.requests))
            done = 0

            async def worker() -> None:
                nonlocal done
                for _ in remaining:
                    await call(b"", timeout=10)
                    done += 1
            await asyncio.gather(*(worker() for _ in range(load.concurrency)))
            return done

    return uvloop.run(main())


class TrivialServer:
    def __init__(self, process: asyncio.subprocess.Process, address: str) -> None:
        self.process = process
        self.address = address

    @property
    def pid(self) -> int:
        return self.process.pid

    async def stop(self) -> None:
        if self.process.returncode is None:
            self.process.terminate()
            await self.process.wait()


async def start_server(timeout: float = 20.0) -> TrivialServer:
    from tests.harness import free_ports

    [port] = free_ports(1)
    address = f"127.0.0.1:{port}"
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.trivial_grpc", str(port), stdin=asyncio.subprocess.DEVNULL)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return TrivialServer(process, address)
        except OSError:
            if process.returncode is not None or asyncio.get_running_loop().time() > deadline:
                raise RuntimeError("the trivial gRPC server did not start") from None
            await asyncio.sleep(0.1)


async def _serve(port: int) -> None:
    import grpc

    async def call(request: bytes, context) -> bytes:
        return b""

    handler = grpc.method_handlers_generic_handler(
        "bench.Trivial", {"Call": grpc.unary_unary_rpc_method_handler(call)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await server.wait_for_termination()


if __name__ == "__main__":
    import uvloop

    uvloop.run(_serve(int(sys.argv[1])))
