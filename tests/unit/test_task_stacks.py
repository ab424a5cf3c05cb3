"""The stuck worker's picture shows where an agent waits, through the async generator it
iterates (an agent's `async for` over its batches ended the chain at the agent before)."""

from __future__ import annotations

import asyncio

from streams.transport.consumer import _awaiting


async def test_the_chain_goes_through_an_async_generator_and_an_awaited_task() -> None:
    gate = asyncio.Event()

    async def inner() -> None:
        await gate.wait()

    async def batches():  # type: ignore[no-untyped-def]
        await asyncio.ensure_future(inner())
        yield 1

    async def agent() -> None:
        async for _ in batches():
            pass

    task = asyncio.ensure_future(agent())
    for _ in range(5):
        await asyncio.sleep(0)
    try:
        chain = _awaiting(task.get_coro())
        names = [step.partition(":")[0] for step in chain]
        assert names == ["agent", "batches", "inner", "wait", "a future"], chain
    finally:
        gate.set()
        await task


async def test_the_chain_goes_through_an_awaitable_that_wraps_a_coroutine() -> None:
    """faust runs an agent as `await actor`, whose `__await__` is its coroutine's."""
    gate = asyncio.Event()

    async def agent() -> None:
        await gate.wait()

    class Actor:
        def __init__(self) -> None:
            self.it = agent()

        def __await__(self):  # type: ignore[no-untyped-def]
            return self.it.__await__()

    async def execute_actor(actor: Actor) -> None:
        await actor

    task = asyncio.ensure_future(execute_actor(Actor()))
    for _ in range(3):
        await asyncio.sleep(0)
    try:
        names = [step.partition(":")[0] for step in _awaiting(task.get_coro())]
        assert names == ["execute_actor", "agent", "wait", "a future"], names
    finally:
        gate.set()
        await task
