"""Prometheus metrics and health routes for ``oarlock run`` and ``oarlock keys serve`` (off unless asked for).

- :mod:`~oarlock.metrics.hooks`: what the credential engine calls (token refreshes and requests): a
  module-level no-op object unless a process installs real hooks;
- :mod:`~oarlock.metrics.run`: the worker's metric definitions, on a registry of its own;
  :mod:`~oarlock.metrics.local`: the lock-free counts the I/O thread keeps for them;
- :mod:`~oarlock.metrics.keys`: the keys service's, read from its counters when scraped;
- :mod:`~oarlock.metrics.store`: a keys store whose failed calls are counted;
- :mod:`~oarlock.metrics.health`: ``/healthz`` (the I/O loop turns) and ``/readyz`` (connected and consuming);
- :mod:`~oarlock.metrics.address`, :mod:`~oarlock.metrics.server`: ``HOST:PORT`` and the HTTP server.

The worker, the transport and the keys service get their metrics from metered subclasses and
wiring outside this package (:mod:`oarlock.runtime.metered`, :mod:`oarlock.amqp.metered`,
:mod:`oarlock.keys.metered`), used only when metrics are on. No label carries an account, a token
or any other unbounded value: the labels are the step's function (one per worker, a name
component.json defines) and fixed sets of outcomes and operations. This package imports only
prometheus_client and oarlock's base modules.
"""
