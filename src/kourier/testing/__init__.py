"""kourier's test kit: an in-memory broker, apps served over it, and a pytest plugin.

- ``memory_broker(name)``: a fresh in-process broker, reached by every ``Client`` and
  ``Service`` whose ``bootstrap_servers`` is ``memory://<name>`` (from code or from
  ``KOURIER_BOOTSTRAP_SERVERS``), so an app's own clients join it untouched.
- ``serve_app(app, "orders")``: the app served over it, with a ready ``Client`` and an
  ``httpx.AsyncClient``, the app's exceptions raised in the test, and what was handled
  and dead-lettered kept for asserts.
- ``kourier.testing.plugin``: pytest fixtures (installed with kourier; see
  docs/testing.md), also against a real Kafka broker with ``pytest --kourier-kafka``.

It must never be imported by kourier itself: tests import it, the library does not.
"""

from kourier.testing.broker import Broker, DeadLetter, memory_broker
from kourier.testing.served import ServedApp, serve_app

__all__ = ["Broker", "DeadLetter", "ServedApp", "memory_broker", "serve_app"]
