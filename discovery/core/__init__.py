"""The backend-neutral core: the model, its validation and codec, selectors, URLs, errors and the backend contract.

* :mod:`.models` - ``Instance``, ``Snapshot``, ``Status``; :mod:`.validation` - the portable schema.
* :mod:`.codec` - the canonical JSON dict every backend stores.
* :mod:`.selectors` - Kubernetes label selectors.
* :mod:`.urls` - backend URLs (secrets redacted); :mod:`.plugins` - backends found by URL scheme.
* :mod:`.errors` - the ``DiscoveryError`` tree.
* :mod:`.backend` - the contract every adapter fulfils.
* :mod:`.definitions` - durable definitions, the optional capability a backend exposes as ``backend.definitions``.
"""
