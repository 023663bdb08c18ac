"""What the deploy/ tests share: where the files are, the worker's drain time, the CLI's option names."""

from __future__ import annotations

import click

from oarlock.cli.main import main as oarlock_cli
from tests.support import REPO

DEPLOY = REPO / "deploy"
ENV_EXAMPLE = DEPLOY / "oarlock.env.example"
DOCKERFILE = DEPLOY / "Dockerfile"
KUBERNETES = DEPLOY / "kubernetes"
SYSTEMD = DEPLOY / "systemd"
# what the worker spends on SIGTERM besides its grace: Worker.stop() waits up to 5 s for the consumer to be
# cancelled, AmqpTransport.close() up to 10 s for its I/O thread (lib/oarlock/runtime/worker.py, amqp/transport.py)
DRAIN_OVERHEAD_SECONDS = 15


def cli_options(*path: str) -> set[str]:
    """Every option name of ``oarlock PATH...`` as the CLI defines it."""
    command: click.Command = oarlock_cli
    for name in path:
        assert isinstance(command, click.Group)
        found = command.get_command(click.Context(command), name)
        assert found is not None, f"no command oarlock {' '.join(path)}"
        command = found
    return {opt for param in command.params if isinstance(param, click.Option) for opt in param.opts}


def used_options(args: list[str]) -> set[str]:
    return {arg for arg in args if arg.startswith("--")}
