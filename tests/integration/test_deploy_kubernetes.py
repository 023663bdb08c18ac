"""The Kubernetes manifests in deploy/kubernetes do what docs/deploy.md says (2/2).

Every manifest is loaded with PyYAML and cross-checked against the code: the probe paths are routes
the metrics server serves and the probe ports are the ones ELASTICIO_METRICS_ADDR / --http /
--metrics bind; every option passed to the CLI exists; the pod's termination grace is above the
worker's drain time; every Secret key a pod reads exists. A worker is started with the Deployment's
environment and arguments (the queues and crypto of a throwaway sandbox) and probed.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from oarlock.protocol.settings import Settings
from tests.integration.deploykit import DRAIN_OVERHEAD_SECONDS, KUBERNETES, cli_options, used_options
from tests.support import TEST_COMPONENTS

# on SIGTERM the keys service waits up to 60 s for a keep-alive cycle under way (lib/oarlock/cli/keys.py,
# serve_command: thread.join(60)); a refresh's own deadline is 60 s too (README, "When refreshing fails")
KEEPALIVE_STOP_SECONDS = 60
DEPLOY_DOC = KUBERNETES.parents[1] / "docs" / "deploy.md"
# the series docs/deploy.md tells operators to alert on, by the process that exposes them
WORKER_SERIES = {
    "oarlock_accounts_reauthorization_cooldown",
    "oarlock_token_refreshes_total",
    "oarlock_messages_total",
    "oarlock_broker_connected",
    "oarlock_keys_store_errors_total",
    "oarlock_messages_in_flight",
    "oarlock_message_duration_seconds",
    "oarlock_publish_confirm_seconds",
    "oarlock_token_request_seconds",
}
KEYS_SERIES = {"oarlock_keys_accounts", "oarlock_keys_updates_total", "oarlock_broker_connected"}


def manifests() -> dict[str, list[dict[str, Any]]]:
    loaded = {}
    for path in sorted(KUBERNETES.glob("*.yaml")):
        documents = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
        for doc in documents:
            assert {"apiVersion", "kind"} <= set(doc), f"{path.name}: a document without apiVersion/kind"
        loaded[path.name] = documents
    return loaded


def objects(kind: str) -> list[dict[str, Any]]:
    return [doc for docs in manifests().values() for doc in docs if doc["kind"] == kind]


def named(kind: str, name: str) -> dict[str, Any]:
    (found,) = [doc for doc in objects(kind) if doc["metadata"]["name"] == name]
    return found


def container(deployment: dict[str, Any]) -> dict[str, Any]:
    (only,) = deployment["spec"]["template"]["spec"]["containers"]
    return only


def port_number(spec: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in spec.get("ports", []) if p["name"] == port]
    return int(number)


def literal_env(spec: dict[str, Any]) -> dict[str, str]:
    values: dict[str, str] = {}
    for source in spec.get("envFrom", []):
        values.update(named("ConfigMap", source["configMapRef"]["name"])["data"])
    values.update({e["name"]: e["value"] for e in spec.get("env", []) if "value" in e})
    return values


def option_value(args: list[str], option: str) -> str:
    return args[args.index(option) + 1]


def test_every_manifest_loads_and_the_kustomization_lists_them_all() -> None:
    loaded = manifests()
    (kustomization,) = loaded.pop("kustomization.yaml")
    assert sorted(kustomization["resources"]) == sorted(loaded)
    kinds = sorted(doc["kind"] for docs in loaded.values() for doc in docs)
    assert kinds == ["ConfigMap", "Deployment", "Deployment", "Job", "Secret", "Secret", "Service"]


def test_the_worker_probes_use_the_routes_and_the_port_of_the_metrics_server() -> None:
    from oarlock.metrics.address import ENV, parse_address
    from oarlock.metrics.server import ROUTES

    worker = named("Deployment", "oarlock-worker-step-1")
    spec = container(worker)
    assert "command" not in spec, "the image's entrypoint (oarlock run) must run"
    host, port = parse_address(literal_env(spec)[ENV])
    assert host == "0.0.0.0", "the kubelet probes the pod's address: 127.0.0.1 (the default) is unreachable"
    ready, alive = spec["readinessProbe"]["httpGet"], spec["livenessProbe"]["httpGet"]
    assert (ready["path"], alive["path"]) == ("/readyz", "/healthz")
    assert {ready["path"], alive["path"]} <= set(ROUTES)
    assert port_number(spec, ready["port"]) == port_number(spec, alive["port"]) == port
    annotations = worker["spec"]["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == port and annotations["prometheus.io/path"] in ROUTES
    assert used_options(spec["args"]) <= cli_options("run")


def test_the_worker_pod_waits_longer_than_the_worker_drains_on_sigterm() -> None:
    spec = container(named("Deployment", "oarlock-worker-step-1"))
    env = {**literal_env(spec), "ELASTICIO_AMQP_URI": "amqp://x", "ELASTICIO_CONTAINER_ID": "pod"}
    env.update({"ELASTICIO_MESSAGE_CRYPTO_PASSWORD": "", "ELASTICIO_MESSAGE_CRYPTO_IV": ""})  # from the Secret
    grace = Settings.from_env(env, api_optional=True).grace_seconds  # as the worker reads it (default 30)
    period = named("Deployment", "oarlock-worker-step-1")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period > grace + DRAIN_OVERHEAD_SECONDS, (period, grace)


def test_the_keys_service_runs_with_keepalive_and_its_probes_and_service_match_its_options() -> None:
    keys = named("Deployment", "oarlock-keys")
    spec = container(keys)
    assert spec["command"] == ["oarlock", "keys", "serve"]
    args = spec["args"]
    assert "--keepalive" in args
    assert used_options(args) <= cli_options("keys", "serve"), used_options(args) - cli_options("keys", "serve")
    from oarlock.metrics.address import parse_address

    http_host, http_port = parse_address(option_value(args, "--http"))
    metrics_host, metrics_port = parse_address(option_value(args, "--metrics"))
    assert http_host == metrics_host == "0.0.0.0"
    ready, alive = spec["readinessProbe"]["httpGet"], spec["livenessProbe"]["httpGet"]
    assert (ready["path"], port_number(spec, ready["port"])) == ("/healthz", http_port)
    assert (alive["path"], port_number(spec, alive["port"])) == ("/healthz", metrics_port)
    period = keys["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert period > KEEPALIVE_STOP_SECONDS, "a SIGKILL during a keep-alive refresh could lose a rotated token"
    assert {"--queue", "--store"} <= set(args) and args.count("--queue") == 2  # updateKeys and credentialInvalid
    env_names = {e["name"] for e in spec["env"]}
    assert {"OARLOCK_API_USERNAME", "OARLOCK_API_KEY"} <= env_names, "--http refuses to start without them"
    service = named("Service", "oarlock-keys")
    labels = keys["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    (route,) = service["spec"]["ports"]
    assert port_number(spec, route["targetPort"]) == http_port
    # the client secrets file the service is given is where the Secret volume puts it
    secrets_file = Path(option_value(args, "--client-secrets"))
    (mount,) = [m for m in spec["volumeMounts"] if secrets_file.is_relative_to(m["mountPath"])]
    (volume,) = [v for v in keys["spec"]["template"]["spec"]["volumes"] if v["name"] == mount["name"]]
    assert secrets_file.name in [item["path"] for item in volume["secret"]["items"]]


def secret_references(doc: Any) -> Iterator[tuple[str, str | None]]:
    """(secret name, key) of every secretKeyRef and secret volume item in a manifest (key None: the whole secret)."""
    if isinstance(doc, dict):
        if "secretKeyRef" in doc:
            yield doc["secretKeyRef"]["name"], doc["secretKeyRef"]["key"]
        if "secretName" in doc:
            items = doc.get("items")
            if items:
                for item in items:
                    yield doc["secretName"], item["key"]
            else:
                yield doc["secretName"], None
        for value in doc.values():
            yield from secret_references(value)
    elif isinstance(doc, list):
        for value in doc:
            yield from secret_references(value)


def test_every_secret_key_a_pod_reads_exists_and_holds_a_placeholder_or_json() -> None:
    secrets = {doc["metadata"]["name"]: doc["stringData"] for doc in objects("Secret")}
    references = {ref for docs in manifests().values() for doc in docs for ref in secret_references(doc)}
    assert len(references) >= 8
    for name, key in references:
        assert name in secrets, f"no Secret {name}"
        assert key is None or key in secrets[name], f"Secret {name} has no key {key}"
    assert "client-secrets.json" in secrets["oarlock-secrets"]
    assert isinstance(json.loads(secrets["oarlock-secrets"]["client-secrets.json"]), dict)
    assert "oauth" in json.loads(secrets["oarlock-step-1-cfg"]["step.json"])
    for values in secrets.values():  # the example ships placeholders only
        for key, value in values.items():
            assert "change-me" in value or key in ("api-username",), f"{key} looks like a real value"


def test_the_topology_job_declares_with_options_the_cli_has() -> None:
    (job,) = objects("Job")
    (spec,) = job["spec"]["template"]["spec"]["containers"]
    assert spec["command"][:3] == ["oarlock", "topology", "declare"]
    assert used_options(spec["command"]) <= cli_options("topology", "declare")


def test_the_series_the_deploy_doc_names_are_the_ones_the_tests_find_exposed() -> None:
    named_in_doc = set(re.findall(r"`(oarlock_[a-z_]+)", DEPLOY_DOC.read_text()))
    assert named_in_doc and named_in_doc <= WORKER_SERIES | KEYS_SERIES, named_in_doc - WORKER_SERIES - KEYS_SERIES


def exposed(url: str) -> set[str]:
    """The series names of a /metrics page (a histogram by its own name, not its _bucket/_sum/_count)."""
    with urllib.request.urlopen(url, timeout=10) as answer:
        text = answer.read().decode()
    names = set(re.findall(r"^([a-z_:][a-z0-9_:]*)[{ ]", text, re.MULTILINE))
    return names | {re.sub(r"_(bucket|sum|count|created)$", "", name) for name in names}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def get(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=5) as answer:
            return int(answer.status)
    except urllib.error.HTTPError as error:
        return int(error.code)
    except OSError:
        return 0


def wait_until_ok(process: subprocess.Popen[str], url: str) -> None:
    """Poll ``url`` as a probe does until it answers 200; the process dying first fails with its stderr."""
    deadline = time.monotonic() + 60
    while get(url) != 200:
        if process.poll() is not None:
            raise AssertionError(
                f"exited {process.returncode} before {url} answered 200: {process.communicate()[1][-3000:]}"
            )
        assert time.monotonic() < deadline, f"{url} never answered 200"
        time.sleep(0.1)


def stops_on_sigterm(process: subprocess.Popen[str], grace_period: int) -> bool:
    """SIGTERM, as Kubernetes sends it; True when the process exits 0 before the pod's grace would SIGKILL it."""
    process.send_signal(signal.SIGTERM)
    code = process.wait(grace_period)
    assert code == 0, process.communicate()[1][-3000:]
    return True


@pytest.mark.amqp
def test_a_worker_with_the_manifest_environment_is_ready_on_its_probe_and_exits_0_on_sigterm(
    broker: Any, tmp_path: Path
) -> None:
    from oarlock.metrics.address import ENV

    deployment = named("Deployment", "oarlock-worker-step-1")
    spec = container(deployment)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTICIO_", "OARLOCK_"))}
    env.update(literal_env(spec))
    env.pop("ELASTICIO_KEYS_STORE")  # the manifest's PostgreSQL is not this machine's
    env.update(broker.env("echo"))  # this test's queues, exchange and crypto instead of the cluster's
    port = free_port()
    env[ENV] = env[ENV].replace("0.0.0.0:", "127.0.0.1:").rsplit(":", 1)[0] + f":{port}"
    probe = spec["readinessProbe"]["httpGet"]["path"]
    cfg = tmp_path / "step.json"
    cfg.write_text("{}")
    args = [str(cfg) if arg.endswith("step.json") else arg for arg in spec["args"]]
    worker = subprocess.Popen(
        [sys.executable, "-m", "oarlock", "run", "--component", str(TEST_COMPONENTS / "amqp"), *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until_ok(worker, f"http://127.0.0.1:{port}{probe}")
        assert get(f"http://127.0.0.1:{port}{spec['livenessProbe']['httpGet']['path']}") == 200
        broker.publish_input({"body": {"hello": "deploy"}})
        (out,) = broker.take("data", 1)
        assert out.decrypted()["body"] == {"echo": {"hello": "deploy"}}
        annotations = deployment["spec"]["template"]["metadata"]["annotations"]
        series = exposed(f"http://127.0.0.1:{port}{annotations['prometheus.io/path']}")
        assert series >= WORKER_SERIES, WORKER_SERIES - series
        assert stops_on_sigterm(worker, deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.amqp
@pytest.mark.postgres
def test_the_keys_service_with_the_manifest_arguments_serves_its_route_and_probes_and_exits_0_on_sigterm(
    tmp_path: Path,
) -> None:
    import base64

    import pika
    import requests

    from oarlock.keys.postgres import PostgresKeyStore

    keys = named("Deployment", "oarlock-keys")
    spec = container(keys)
    secret = named("Secret", "oarlock-secrets")["stringData"]
    tag = uuid.uuid4().hex[:10]
    store_url, table = "postgresql://postgres@127.0.0.1:5432/test", f"oarlock_deploy_{tag}"
    http_port, metrics_port = free_port(), free_port()
    client_secrets = tmp_path / "client-secrets.json"
    client_secrets.write_text(secret["client-secrets.json"])
    exchange = f"deploy-{tag}"
    # the manifest's arguments, each value swapped for this machine's: the store, the queues, the exchange,
    # the listening addresses on 127.0.0.1, the client secrets file, the webhook (no alert is sent here)
    local = {
        "--store": f"{store_url}?table={table}",
        "--http": f"127.0.0.1:{http_port}",
        "--metrics": f"127.0.0.1:{metrics_port}",
        "--client-secrets": str(client_secrets),
        "--exchange": exchange,
        "--webhook": "http://127.0.0.1:9/alerts",
    }
    args, queues = list(spec["args"]), []
    for index, arg in enumerate(args[:-1]):
        if arg == "--queue":
            queues.append(f"deploy-{tag}-{args[index + 1].rsplit(':', 1)[-1]}")
            args[index + 1] = queues[-1]
        elif arg in local:
            args[index + 1] = local[arg]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ELASTICIO_", "OARLOCK_"))}
    env.update(
        {
            "ELASTICIO_AMQP_URI": "amqp://guest:guest@127.0.0.1:5672/%2F",
            "ELASTICIO_MESSAGE_CRYPTO_PASSWORD": secret["message-crypto-password"],
            "ELASTICIO_MESSAGE_CRYPTO_IV": secret["message-crypto-iv"],
            "OARLOCK_API_USERNAME": secret["api-username"],
            "OARLOCK_API_KEY": secret["api-key"],
            "OARLOCK_KEYS_KEY": base64.b64encode(os.urandom(32)).decode(),  # the Secret's is a placeholder
        }
    )
    given = {"ELASTICIO_AMQP_URI", "ELASTICIO_MESSAGE_CRYPTO_PASSWORD", "ELASTICIO_MESSAGE_CRYPTO_IV"}
    given |= {"OARLOCK_API_USERNAME", "OARLOCK_API_KEY", "OARLOCK_KEYS_KEY"}
    assert given | {"PGPASSWORD"} == {e["name"] for e in spec["env"]}  # what the pod gets, the test gives
    connection = pika.BlockingConnection(pika.URLParameters(env["ELASTICIO_AMQP_URI"]))
    channel = connection.channel()
    channel.exchange_declare(exchange, exchange_type="direct")
    for queue in queues:
        channel.queue_declare(queue)
    service = subprocess.Popen(
        [sys.executable, "-m", "oarlock", *spec["command"][1:], *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        ready, alive = spec["readinessProbe"]["httpGet"], spec["livenessProbe"]["httpGet"]
        wait_until_ok(service, f"http://127.0.0.1:{http_port}{ready['path']}")
        wait_until_ok(service, f"http://127.0.0.1:{metrics_port}{alive['path']}")
        route = f"http://127.0.0.1:{http_port}/v1/accounts/acct-deploy"
        auth = (env["OARLOCK_API_USERNAME"], env["OARLOCK_API_KEY"])
        token = {"access_token": "at-deploy", "refresh_token": "rt-deploy", "expires_in": 3600}
        put = requests.put(route, json={"keys": {"oauth": token}}, auth=auth, timeout=30)
        assert put.status_code == 200 and put.json()["stored"] is True, put.text
        got = requests.get(route, auth=auth, timeout=30)
        assert got.status_code == 200 and got.json()["keys"]["oauth"]["refresh_token"] == "rt-deploy"
        assert requests.get(route, timeout=30).status_code == 401
        annotations = keys["spec"]["template"]["metadata"]["annotations"]
        series = exposed(f"http://127.0.0.1:{metrics_port}{annotations['prometheus.io/path']}")
        assert series >= KEYS_SERIES, KEYS_SERIES - series
        assert stops_on_sigterm(service, keys["spec"]["template"]["spec"]["terminationGracePeriodSeconds"])
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        for queue in queues:
            channel.queue_delete(queue)
        channel.exchange_delete(exchange)
        connection.close()
        PostgresKeyStore(store_url, table=table).drop()
