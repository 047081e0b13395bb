import asyncio

import pytest


async def test_sleep_and_call_soon():
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    loop.call_soon(fut.set_result, 42)
    assert await fut == 42
    await asyncio.sleep(0.01)


@pytest.mark.asyncio(loop_factories=["uringloop"])
async def test_runs_on_uringloop():
    import uringloop

    assert isinstance(asyncio.get_running_loop(), uringloop.Loop)
