"""``oarlock run``: the sailor-compatible RabbitMQ worker."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys
import threading
from types import FrameType

import click

from oarlock import logs
from oarlock.errors import ComponentError, ConfigurationError, KeyStoreError, TransportError
from oarlock.redact import redact_text


@click.command("run")
@click.option(
    "--component",
    "component_dir",
    default=None,
    type=click.Path(file_okay=False),
    help="Folder holding component.json (default: ELASTICIO_COMPONENT_PATH or the current folder).",
)
@click.option("--cfg", "cfg_file", default=None, help="Step config from a JSON file instead of the platform API.")
@click.option(
    "--concurrency",
    type=click.IntRange(1, 1024),
    default=None,
    help="Messages processed at once (default: ELASTICIO_CONCURRENCY, else the prefetch).",
)
@click.option("--burst", is_flag=True, help="Exit 0 once the queue is empty and nothing is in flight.")
@click.option("--grace", type=float, default=None, help="Seconds to finish in-flight work on SIGTERM (default 30).")
@click.option(
    "--time-limit",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Seconds one message may run before it is an error event and a reject "
    "(default: ELASTICIO_MESSAGE_TIME_LIMIT, else none).",
)
@click.option(
    "--metrics",
    "metrics_addr",
    default=None,
    metavar="HOST:PORT",
    help="Serve /metrics, /healthz and /readyz on HOST:PORT, :PORT or PORT (host 127.0.0.1) "
    "(default: ELASTICIO_METRICS_ADDR, else off).",
)
def run_command(
    component_dir: str | None,
    cfg_file: str | None,
    concurrency: int | None,
    burst: bool,
    grace: float | None,
    time_limit: float | None,
    metrics_addr: str | None,
) -> None:
    """Consume ELASTICIO_LISTEN_MESSAGES_ON and publish what the function emits (docs/protocol.md)."""
    from oarlock.amqp.tls import AmqpTls
    from oarlock.amqp.transport import hot_path_enabled
    from oarlock.component.model import Component
    from oarlock.credentials.manager import CredentialManager
    from oarlock.protocol.settings import Settings
    from oarlock.redact import register_secret
    from oarlock.runtime.executor import FunctionRunner, UnloadableFunction
    from oarlock.runtime.runkit import run_kit
    from oarlock.runtime.steploader import load_step_config

    env = dict(os.environ)
    logs.configure(env.get("ELASTICIO_LOG_LEVEL", "info"))
    try:
        settings = Settings.from_env(env, api_optional=bool(cfg_file or "ELASTICIO_CFG" in env))
        for secret in (settings.message_crypto_password, settings.message_crypto_password_previous, settings.api_key):
            register_secret(secret)
        if time_limit is not None:
            settings = dataclasses.replace(settings, message_time_limit=time_limit)
        step = load_step_config(settings, env, cfg_file)
        kit = run_kit(metrics_addr, env)  # metrics off: the plain worker, transport and store
        coordinator = None
        if settings.keys_store:
            from oarlock.keys.store import open_store, safe_url

            try:
                coordinator = kit.store(open_store(settings.keys_store))
            except KeyStoreError as exc:
                reason = redact_text(str(exc))
                click.echo(f"oarlock: keys store {safe_url(settings.keys_store)} cannot be used: {reason}", err=True)
                sys.exit(2)
        runner: FunctionRunner | UnloadableFunction
        credentials: CredentialManager | None = None
        # no component.json to run: a start-up failure, as sailor exits; a function that cannot be loaded is
        # not: every message gets an error event naming the problem
        component = Component.load(component_dir or settings.component_path or ".")
        try:
            credentials = CredentialManager(coordinator=coordinator)
            runner = FunctionRunner(component, settings.function, credentials=credentials)
        except ComponentError as exc:
            runner = UnloadableFunction(exc)
        stopping = threading.Event()  # SIGTERM: a start still waiting for the broker gives up at once
        transport = kit.transport(
            settings.amqp_uri,
            name=f"oarlock {settings.function} {settings.step_id} {settings.container_id}",
            hot_path=hot_path_enabled(env),
            tls=AmqpTls.from_env(env),
            stop=stopping,
        )
        worker = kit.worker(
            settings, runner, step, transport, concurrency=concurrency, burst=burst, grace_seconds=grace
        )
        kit.serve(worker, credentials)  # /metrics, /healthz, /readyz when asked for
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)

    def stop(signum: int, frame: FrameType | None) -> None:
        stopping.set()
        worker.request_stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        code = worker.run()
        if credentials is not None:
            credentials.close()  # a credential the keys store could not take gets a last try
    except TransportError as exc:  # only start() raises it: no broker, or one that refuses us
        click.echo(f"oarlock: {redact_text(str(exc))}", err=True)
        sys.exit(2)
    except ConfigurationError as exc:
        click.echo(f"oarlock: {exc}", err=True)
        sys.exit(2)
    sys.exit(code)
