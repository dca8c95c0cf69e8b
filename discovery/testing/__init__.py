"""The conformance kit, shipped so that a backend author can prove a backend behaves like the others.

* :mod:`discovery.testing.conformance` - :class:`~discovery.testing.conformance.ConformanceSuite` (needs pytest:
  ``pip install 'service-discovery[testing]'``).
* :mod:`discovery.testing.waiting` - :func:`eventually` and :class:`Follower`: waiting with a deadline.
* :mod:`discovery.testing.registrant` - a registrant process for death tests (``kill -9`` it, watch it go).
"""

from discovery.testing.waiting import Follower, eventually

__all__ = ["Follower", "eventually"]
