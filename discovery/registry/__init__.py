"""The registries: the asyncio core and the blocking facade over it.

* :mod:`.async_registry` - ``AsyncRegistry``, ``AsyncWatch``.
* :mod:`.registration` - ``AsyncRegistration``: one registration's state and history.
* :mod:`.watch_hub` - the one fan-out: a backend watch per service per registry, shared by every subscriber.
* :mod:`.blocking` - ``Registry``, ``Registration``, ``Watch``: the same surface for threads.
* :mod:`.loop_thread` - the event loop thread behind the blocking facade.
"""
