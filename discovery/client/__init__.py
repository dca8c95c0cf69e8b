"""Client-side discovery: picking an instance to call and the lifecycle of the one you serve.

* :mod:`.cache` - ``ServiceCache``: a watched service's instances with a balancer, picks in your thread.
* :mod:`.balancers` - round robin, random, weighted, power of two, zone-aware, consistent hash.
* :mod:`.feedback` - failure tracking: instances that keep failing are set aside.
* :mod:`.httpx_transport` - ``DiscoveryTransport``: ``http://<service>/`` through httpx.
* :mod:`.lifecycle` - health checks and drain; :mod:`.asgi` - ``ServiceLifespan`` for ASGI apps.
"""
