"""Polling: wait until a condition holds, read a service's gRPC health, wait until it reaches a status. Every wait
is bounded and fails naming what it waited for."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


async def wait_until(condition: Callable[[], object], timeout_s: float, what: str) -> None:
    """Polls condition (sync or async) until it holds; fails naming what it waited for."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)


async def health(channel: grpc.aio.Channel, service: str, timeout: float | None = None) -> int:
    request = health_pb2.HealthCheckRequest(service=service)
    return (await health_pb2_grpc.HealthStub(channel).Check(request, timeout=timeout)).status


async def wait_for_health(channel: grpc.aio.Channel, service: str, status: int, timeout_s: float = 60) -> None:
    async def reached() -> bool:
        return await health(channel, service, timeout=5) == status

    await wait_until(
        reached,
        timeout_s,
        f"{service or 'the server'} to be {health_pb2.HealthCheckResponse.ServingStatus.Name(status)}",
    )
