"""deploy/: the fleet's one drift worker, and the gateways pointed at it, agree with the
code: the worker's arguments parse and listen where its Service sends, the gateways'
settings name that Service, one replica replaced with Recreate, its own ServiceAccount
with no API access, probes on /status, only gateway pods may send it samples, and it
checks their tags with the fleet secret they sign with.
(Schema validity of every object: tests/unit/test_deploy.py.)"""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from gateway.cli import build_parser
from gateway.drift.channel import parse_host_port, parse_udp
from gateway.drift.feed import drift_settings_problem
from gateway.drift.manager import runs_local_worker
from gateway.settings import from_env
from tests.unit.test_deploy import OVERLAYS, Obj, built, env_of, find, gateway_container

WORKER = "switchyard-drift"


def worker_pod(objects: list[Obj]) -> Obj:
    pod: Obj = find(objects, "Deployment", WORKER)["spec"]["template"]["spec"]
    return pod


def labels_match(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_worker_replaced_whole_with_no_api_access(overlay: str) -> None:
    objects = built(overlay)
    deployment = find(objects, "Deployment", WORKER)
    assert deployment["spec"]["replicas"] == 1
    assert deployment["spec"]["strategy"] == {"type": "Recreate"}  # never two at once
    pod = worker_pod(objects)
    account = find(objects, "ServiceAccount", pod["serviceAccountName"])
    assert pod["serviceAccountName"] != "switchyard"  # none of the gateway's RBAC
    assert account["automountServiceAccountToken"] is False
    assert pod["automountServiceAccountToken"] is False
    bound = {
        s["name"]
        for o in objects
        if o["kind"] in ("RoleBinding", "ClusterRoleBinding")
        for s in o.get("subjects", [])
    }
    assert pod["serviceAccountName"] not in bound
    # No HPA may scale it past one, no PDB keep the old one while a new one starts.
    worker_labels = deployment["spec"]["template"]["metadata"]["labels"]
    for o in objects:
        if o["kind"] == "HorizontalPodAutoscaler":
            assert o["spec"]["scaleTargetRef"]["name"] != WORKER
        if o["kind"] == "PodDisruptionBudget":
            assert not labels_match(o["spec"]["selector"]["matchLabels"], worker_labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_listens_where_its_service_and_the_gateways_send(overlay: str) -> None:
    objects = built(overlay)
    pod = worker_pod(objects)
    [container] = pod["containers"]
    args = build_parser().parse_args(container["args"])  # the real command line
    listen = parse_udp(args.listen, "--listen", listening=True)
    http_host, http_port = parse_host_port(args.http, "--http")
    assert (listen.host, http_host) == ("0.0.0.0", "0.0.0.0")
    ports = {p["name"]: (p["containerPort"], p["protocol"]) for p in container["ports"]}
    assert ports == {"samples": (listen.port, "UDP"), "http": (http_port, "TCP")}
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert args.drift_dir in mounts  # writable: status, reports, episodes, ledger

    service = find(objects, "Service", WORKER)
    assert labels_match(service["spec"]["selector"], pod_labels(objects))
    by_name = {p["name"]: p for p in service["spec"]["ports"]}
    assert by_name["samples"]["protocol"] == "UDP" and by_name["samples"]["targetPort"] in ports
    assert by_name["http"]["protocol"] == "TCP" and by_name["http"]["targetPort"] in ports

    # The gateways: samples to the Service's UDP port, status from its HTTP port, and
    # no drift worker of their own.
    env = env_of(gateway_container(objects))
    settings = from_env(env)
    assert drift_settings_problem(settings) is None and not runs_local_worker(settings)
    target = parse_udp(env["SWITCHYARD_DRIFT_WORKER_ADDRESS"])
    assert (target.host, target.port) == (WORKER, by_name["samples"]["port"])
    status = urlsplit(env["SWITCHYARD_DRIFT_STATUS_URL"])
    assert (status.hostname, status.port) == (WORKER, by_name["http"]["port"])


def fleet_secret_ref(container: Obj) -> object:
    """Where a container's SWITCHYARD_FLEET_SECRET comes from (None: it has none)."""
    for env in container.get("env", []):
        if env["name"] == "SWITCHYARD_FLEET_SECRET":
            return env.get("valueFrom") or env.get("value")
    return None


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_worker_checks_tags_with_the_secret_the_gateways_sign_with(overlay: str) -> None:
    # A gateway with the secret and a worker without it would take anything (and a
    # worker with another one would drop every datagram as bad_tag).
    objects = built(overlay)
    [container] = worker_pod(objects)["containers"]
    gateway = fleet_secret_ref(gateway_container(objects))
    assert fleet_secret_ref(container) == gateway
    if overlay == "overlays/prod":
        assert gateway == {"secretKeyRef": {"name": "switchyard-fleet", "key": "secret"}}
    args = build_parser().parse_args(container["args"])
    assert args.fleet_secret_file is None  # not a second source to disagree with
    names = {e["name"] for e in container["env"]}
    assert "SWITCHYARD_FLEET_SECRET_FILE" not in names


def pod_labels(objects: list[Obj]) -> dict[str, str]:
    labels: dict[str, str] = find(objects, "Deployment", WORKER)["spec"]["template"]["metadata"][
        "labels"
    ]
    return labels


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_resources_and_security(overlay: str) -> None:
    objects = built(overlay)
    [container] = worker_pod(objects)["containers"]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/status", "port": "http"}
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert worker_pod(objects)["securityContext"]["runAsNonRoot"] is True
    names = {e["name"] for e in container["env"]}
    assert "SWITCHYARD_ADMIN_TOKEN" in names  # the reports need the gateways' token


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateway_pods_may_send_samples_and_prometheus_scrapes_it(overlay: str) -> None:
    objects = built(overlay)
    policy = find(objects, "NetworkPolicy", WORKER)["spec"]
    assert labels_match(policy["podSelector"]["matchLabels"], pod_labels(objects))
    gateway = find(objects, "Deployment", "switchyard")["spec"]["template"]["metadata"]["labels"]
    udp = [rule for rule in policy["ingress"] if rule["ports"][0]["protocol"] == "UDP"]
    [rule] = udp
    assert rule["ports"] == [{"protocol": "UDP", "port": 9300}]
    [source] = rule["from"]
    assert labels_match(source["podSelector"]["matchLabels"], gateway)
    assert not labels_match(source["podSelector"]["matchLabels"], pod_labels(objects))
    monitor = find(objects, "ServiceMonitor", WORKER)["spec"]
    service = find(objects, "Service", WORKER)
    assert labels_match(monitor["selector"]["matchLabels"], service["metadata"]["labels"])
    assert monitor["endpoints"][0]["port"] in {p["name"] for p in service["spec"]["ports"]}
    assert monitor["endpoints"][0]["path"] == "/metrics"
    # The gateway's own ServiceMonitor does not scrape the worker's Service twice.
    gateway_monitor = find(objects, "ServiceMonitor", "switchyard")["spec"]
    assert not labels_match(
        gateway_monitor["selector"]["matchLabels"], service["metadata"]["labels"]
    )
