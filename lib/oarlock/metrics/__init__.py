"""Prometheus metrics and health routes for ``oarlock run`` and ``oarlock keys serve`` (off unless asked for).

- :mod:`~oarlock.metrics.hooks`: what the hot paths call (the worker's settlement, the transport's
  readiness, the token client): a module-level no-op object unless a process installs real hooks;
- :mod:`~oarlock.metrics.run`: the worker's metric definitions, on a registry of its own;
- :mod:`~oarlock.metrics.keys`: the keys service's, read from its counters when scraped;
- :mod:`~oarlock.metrics.observed`: a transport that times publish -> confirm, a keys store whose errors
  are counted (both only put in place when metrics are on: off, nothing stands in the way);
- :mod:`~oarlock.metrics.health`: ``/healthz`` (the I/O loop turns) and ``/readyz`` (connected and consuming);
- :mod:`~oarlock.metrics.server`: the HTTP server of ``/metrics``, ``/healthz`` and ``/readyz``.

No label carries an account, a token or any other unbounded value: the labels are the function of
the step (one per worker, a name component.json defines) and fixed sets of outcomes and operations.
This package imports only prometheus_client and oarlock's base modules.
"""
