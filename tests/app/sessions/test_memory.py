"""The in-process store (app/sessions/memory.py), as the anti-pattern it is."""

from tests.app.sessions.stores import memory_store, start


async def test_memory_store_is_private_to_its_process() -> None:
    web1, web2 = memory_store(), memory_store()
    key, _ = await start(web1)
    assert await web1.touch(key) is not None
    assert await web2.touch(key) is None
