"""deploy/: every kustomization builds, every object is valid, and the manifests agree
with the code they deploy (drain timing, probes, settings, metrics, policies, RBAC).

Objects of built-in kinds are validated offline against the Kubernetes OpenAPI schemas
that the `kubernetes-validate` package ships (strict: unknown fields are errors), at
the oldest and the newest Kubernetes version we support. Custom resources (the
Prometheus Operator's ServiceMonitor, KEDA's ScaledObject) have no schema in that
package: they are checked against the small schemas below, written from those
projects' CRD references for the fields we use, which is weaker and says so.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.cli import main as cli_main
from gateway.controlplane.k8s.client import split_ref
from gateway.controlplane.k8s.pools import service_pools
from gateway.controlplane.policy.compile import check_policies, compile_snapshot
from gateway.controlplane.policy.fields import split_service_url
from gateway.controlplane.policy.loader import configmap_policies
from gateway.dataplane.health import HealthRegistry
from gateway.observability.metrics import GatewayMetrics
from gateway.settings import Settings, from_env
from tests.kubeproto import authorized, resource_of, service_account_user
from tests.kustomize import build

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
KUSTOMIZATIONS = sorted(
    str(p.parent.relative_to(DEPLOY)) for p in DEPLOY.rglob("kustomization.yaml")
)
OVERLAYS = ["overlays/dev", "overlays/prod"]
KUBERNETES_VERSIONS = ["1.30.0", "1.37.0"]  # preStop `sleep` needs 1.30
Obj = dict[str, Any]

SERVICE_MONITOR = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "selector": {"type": "object", "required": ["matchLabels"]},
                "namespaceSelector": {"type": "object"},
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string"},
                            "interval": {"type": "string", "pattern": "^[0-9]+(ms|s|m|h)$"},
                            "scrapeTimeout": {"type": "string", "pattern": "^[0-9]+(ms|s|m)$"},
                        },
                    },
                },
            },
        },
    },
}
SCALED_OBJECT = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "properties": {
        "apiVersion": {"const": "keda.sh/v1alpha1"},
        "spec": {
            "type": "object",
            "required": ["scaleTargetRef", "triggers"],
            "additionalProperties": False,
            "properties": {
                "scaleTargetRef": {"type": "object", "required": ["name"]},
                "minReplicaCount": {"type": "integer", "minimum": 0},
                "maxReplicaCount": {"type": "integer", "minimum": 1},
                "pollingInterval": {"type": "integer"},
                "cooldownPeriod": {"type": "integer"},
                "advanced": {"type": "object"},
                "triggers": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["type", "metadata"],
                        "properties": {
                            "type": {"const": "prometheus"},
                            "metricType": {"enum": ["AverageValue", "Value", "Utilization"]},
                            "metadata": {
                                "type": "object",
                                "required": ["serverAddress", "query", "threshold"],
                                "additionalProperties": {"type": "string"},
                            },
                        },
                    },
                },
            },
        },
    },
}
CUSTOM = {("monitoring.coreos.com/v1", "ServiceMonitor"): SERVICE_MONITOR}
CUSTOM[("keda.sh/v1alpha1", "ScaledObject")] = SCALED_OBJECT


def built(path: str) -> list[Obj]:
    return build(DEPLOY / path)


def find(objects: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objects if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def gateway_container(objects: list[Obj]) -> Obj:
    pod = find(objects, "Deployment", "switchyard")["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "gateway")


def env_of(container: Obj) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def exported_metrics() -> dict[str, set[str]]:
    """Every metric family the gateway exports, with its label names."""
    from prometheus_client.exposition import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from gateway.observability.metrics import AliasGauge, EndpointGauges

    metrics = GatewayMetrics()
    metrics.track_endpoint(EndpointGauges("h:1", lambda: 0, lambda: False, lambda: 0))
    metrics.series("r", "v", "1", "h:1").by_class[2] += 1
    metrics.series("r", "v", "1", "h:1").duration.observe(0.1)
    metrics.route("r").errors_by_code["x"] = 1
    metrics.kube_watch_restarts[("x", "gone")] = 1
    metrics.kube_synced["x"] = True
    metrics.discovered["p"] = 1
    metrics.registry_problems["r"] = 1
    metrics.registry_aliases[("m", "a")] = AliasGauge("m", "a", "1", False, 1.0)
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(generate_latest(metrics.registry()).decode()):
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
    return out


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_every_object_is_valid_against_the_kubernetes_schemas(path: str) -> None:
    objects = built(path)
    assert objects
    for obj in objects:
        custom = CUSTOM.get((obj["apiVersion"], obj["kind"]))
        if custom is not None:
            jsonschema.validate(obj, custom)
            continue
        for version in KUBERNETES_VERSIONS:
            kubernetes_validate.validate(obj, version, strict=True)


@pytest.mark.parametrize("path", KUSTOMIZATIONS)
def test_the_minimal_build_matches_kubectl_kustomize(path: str) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl here: the minimal build stands alone")
    out = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr

    def keyed(objects: list[Obj]) -> dict[tuple[str, ...], Obj]:
        return {
            (
                o["apiVersion"],
                o["kind"],
                o["metadata"].get("namespace", ""),
                o["metadata"]["name"],
            ): o
            for o in objects
        }

    theirs = keyed([d for d in yaml.safe_load_all(out.stdout) if d])
    assert keyed(built(path)) == theirs


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_is_complete_and_in_one_namespace(overlay: str) -> None:
    objects = built(overlay)
    kinds = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for needed in [
        ("Deployment", "switchyard"),
        ("Service", "switchyard"),
        ("Service", "switchyard-admin"),
        ("ServiceAccount", "switchyard"),
        ("Role", "switchyard"),
        ("RoleBinding", "switchyard"),
        ("PodDisruptionBudget", "switchyard"),
        ("HorizontalPodAutoscaler", "switchyard"),
        ("ServiceMonitor", "switchyard"),
        ("ConfigMap", "switchyard-policies"),
    ]:
        assert needed in kinds, needed
    namespaces = {o["metadata"].get("namespace") for o in objects}
    assert len(namespaces) == 1 and None not in namespaces
    binding = find(objects, "RoleBinding", "switchyard")
    assert binding["subjects"][0]["namespace"] in namespaces


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_drain_timing_fits_the_termination_grace_period(overlay: str) -> None:
    """preStop sleep + drain delay + drain timeout < terminationGracePeriodSeconds, with
    the values the gateway will actually read from its environment."""
    objects = built(overlay)
    pod = find(objects, "Deployment", "switchyard")["spec"]["template"]["spec"]
    container = gateway_container(objects)
    settings = from_env(env_of(container))
    pre_stop = container["lifecycle"]["preStop"]["sleep"]["seconds"]
    total = pre_stop + settings.drain_delay + settings.drain_timeout
    assert settings.drain_timeout > Settings().drain_delay
    assert total < pod["terminationGracePeriodSeconds"], (overlay, total)
    # ...with a margin for the process to exit after the deadline.
    assert pod["terminationGracePeriodSeconds"] - total >= 5


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_security_and_settings_match_the_gateway(overlay: str) -> None:
    objects = built(overlay)
    pod = find(objects, "Deployment", "switchyard")["spec"]["template"]["spec"]
    container = gateway_container(objects)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    defaults = Settings()
    assert ports == {
        "http": defaults.port,
        "admin": defaults.admin_port,
        "grpc": defaults.grpc_port,
    }
    live, ready = container["livenessProbe"]["httpGet"], container["readinessProbe"]["httpGet"]
    assert (live["path"], ready["path"]) == ("/livez", "/readyz")
    assert live["port"] == ready["port"] == "admin"
    assert container["resources"]["requests"] and container["resources"]["limits"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert container["securityContext"]["capabilities"]["drop"] == ["ALL"]
    assert {c["topologyKey"] for c in pod["topologySpreadConstraints"]} == {
        "topology.kubernetes.io/zone",
        "kubernetes.io/hostname",
    }
    # Every SWITCHYARD_* variable is a real setting (from_env rejects nothing, so check
    # the names), and the ConfigMap reference expands to NAMESPACE/NAME.
    env = env_of(container)
    names = {f"SWITCHYARD_{f.upper()}" for f in Settings.__dataclass_fields__}
    assert {k for k in env if k.startswith("SWITCHYARD_")} <= names
    namespace = objects[0]["metadata"]["namespace"]
    reference = env["SWITCHYARD_POLICY_CONFIGMAP"].replace("$(POD_NAMESPACE)", namespace)
    assert split_ref(reference, "configmap") == (namespace, "switchyard-policies")
    # $(POD_NAMESPACE) expands only if defined earlier in the list.
    order = [e["name"] for e in container["env"]]
    assert order.index("POD_NAMESPACE") < order.index("SWITCHYARD_POLICY_CONFIGMAP")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_policies_configmap_is_valid_and_its_pools_name_services_of_the_build(
    overlay: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    objects = built(overlay)
    configmap = find(objects, "ConfigMap", "switchyard-policies")
    policies, problems = configmap_policies(configmap["data"], "switchyard-policies")
    assert not problems and policies
    assert not check_policies(policies)
    metrics = GatewayMetrics()
    compile_snapshot(policies, metrics=metrics, health=HealthRegistry(metrics), discovered={})
    services = {
        (o["metadata"]["namespace"], o["metadata"]["name"]): {p["name"] for p in o["spec"]["ports"]}
        for o in objects
        if o["kind"] == "Service"
    }
    pools = service_pools(policies)
    assert pools
    for pool in pools:
        ref = split_service_url(pool)
        assert ref.port in services.get(ref.slice_key, set()), f"{pool}: no such Service port"
    # The same ConfigMap, as a manifest file, passes `switchyard policy validate`.
    manifest = tmp_path / "configmap.yaml"
    manifest.write_text(yaml.safe_dump(configmap))
    assert cli_main(["policy", "validate", str(manifest)]) == 0
    assert "k8s:// pool(s) not expanded" in capsys.readouterr().out


def test_role_is_least_privilege() -> None:
    role = find(built("base"), "Role", "switchyard")
    granted = {
        (group, resource, verb)
        for rule in role["rules"]
        for group in rule["apiGroups"]
        for resource in rule["resources"]
        for verb in rule["verbs"]
    }
    assert granted == {
        ("", "configmaps", "get"),
        ("", "configmaps", "list"),
        ("", "configmaps", "watch"),
        ("discovery.k8s.io", "endpointslices", "get"),
        ("discovery.k8s.io", "endpointslices", "list"),
        ("discovery.k8s.io", "endpointslices", "watch"),
        ("coordination.k8s.io", "leases", "get"),
        ("coordination.k8s.io", "leases", "create"),
        ("coordination.k8s.io", "leases", "update"),
        ("", "events", "create"),
        ("", "events", "patch"),
    }
    assert all("*" not in json.dumps(rule) for rule in role["rules"])


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_gateway_may_read_its_configmap_and_every_pool_it_names(overlay: str) -> None:
    """What the gateway asks the API for, authorized by the overlay's own RBAC objects
    the way kube-apiserver does: a Role reaches only its own namespace, so a k8s:// pool
    in another namespace would need deploy/pool-access there."""
    objects = built(overlay)
    pod = find(objects, "Deployment", "switchyard")["spec"]["template"]["spec"]
    namespace = objects[0]["metadata"]["namespace"]
    user = service_account_user(namespace, pod["serviceAccountName"])
    rbac = [o for o in objects if o["apiVersion"].startswith("rbac.authorization.k8s.io/")]

    def stored(plural: str, ns: str) -> list[Obj]:
        return [
            o
            for o in rbac
            if resource_of(o)[1] == plural and o["metadata"].get("namespace", "") == ns
        ]

    def allowed(verb: str, plural: str, ns: str, name: str | None = None) -> bool:
        group = "discovery.k8s.io" if plural == "endpointslices" else ""
        return authorized(stored, user, verb, group, plural, ns, name)

    configmap = find(objects, "ConfigMap", "switchyard-policies")["metadata"]["name"]
    for verb in ("get", "list", "watch"):
        assert allowed(verb, "configmaps", namespace, configmap)
    assert allowed("create", "events", namespace) and allowed("patch", "events", namespace)
    policies, _ = configmap_policies(
        find(objects, "ConfigMap", "switchyard-policies")["data"], "switchyard-policies"
    )
    for pool in service_pools(policies):
        pool_namespace = split_service_url(pool).slice_key[0]
        for verb in ("list", "watch"):
            assert allowed(verb, "endpointslices", pool_namespace), (pool, verb)
    # ...and nowhere else: the grant is namespaced.
    assert not allowed("list", "endpointslices", "kube-system")
    assert not allowed("get", "secrets", namespace)


def test_pool_access_grants_endpointslices_only_to_the_prod_gateway() -> None:
    objects = built("pool-access")
    role = find(objects, "Role", "switchyard-discovery")
    assert [(r["apiGroups"], r["resources"], sorted(r["verbs"])) for r in role["rules"]] == [
        (["discovery.k8s.io"], ["endpointslices"], ["get", "list", "watch"])
    ]
    binding = find(objects, "RoleBinding", "switchyard-discovery")
    prod = find(built("overlays/prod"), "Deployment", "switchyard")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "switchyard-discovery",
    }
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": prod["spec"]["template"]["spec"]["serviceAccountName"],
            "namespace": prod["metadata"]["namespace"],
        }
    ]


def test_gpu_backend_scales_on_metrics_the_gateway_exports() -> None:
    exported = exported_metrics()
    hpa_build = built("backends/vllm/hpa")
    vllm = find(hpa_build, "Deployment", "vllm")["spec"]["template"]["spec"]["containers"][0]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == "1"
    hpa = find(hpa_build, "HorizontalPodAutoscaler", "vllm")
    metric = hpa["spec"]["metrics"][0]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name in exported
    max_seqs = next(int(a.split("=")[1]) for a in vllm["args"] if a.startswith("--max-num-seqs"))
    assert 0 < float(metric["pods"]["target"]["averageValue"]) < max_seqs

    adapter = find(built("monitoring"), "ConfigMap", "prometheus-adapter")
    rules = yaml.safe_load(adapter["data"]["config.yaml"])
    for rule in rules["rules"] + rules["externalRules"]:
        series = re.match(r"(\w+)\{(.*)\}", rule["seriesQuery"])
        assert series is not None
        assert series[1] in exported, series[1]
        used = set(re.findall(r"(\w+)!=", series[2])) | set(rule["resources"]["overrides"])
        assert used <= exported[series[1]], used - exported[series[1]]
    assert rules["rules"][0]["name"]["as"] == name

    scaled = find(built("backends/vllm/keda"), "ScaledObject", "vllm")
    query = scaled["spec"]["triggers"][0]["metadata"]["query"]
    queried = re.search(r"(switchyard_\w+)\{([^}]*)\}", query)
    assert queried is not None and queried[1] in exported
    assert set(re.findall(r"(\w+)=", queried[2])) <= exported[queried[1]]
    prod_namespace = find(built("overlays/prod"), "Service", "vllm")["metadata"]["namespace"]
    assert f'k8s_namespace="{prod_namespace}"' in query


def test_dashboard_queries_only_exported_metrics() -> None:
    exported = exported_metrics()
    dashboard = json.loads((DEPLOY / "monitoring/dashboards/switchyard.json").read_text())
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for name in re.findall(r"\bswitchyard_\w+", target["expr"]):
                assert name in exported, f"{panel['title']}: {name} is not exported"
    generated = find(built("monitoring"), "ConfigMap", "switchyard-dashboard")
    assert json.loads(generated["data"]["switchyard.json"]) == dashboard
    assert generated["metadata"]["labels"]["grafana_dashboard"] == "1"


def test_dev_overlay_references_only_objects_it_creates() -> None:
    """`kubectl apply -k deploy/overlays/dev` is complete: every Secret, ConfigMap and
    ServiceAccount its pods need is in the build (prod expects the admin Secret made
    by hand, as the README says)."""
    objects = built("overlays/dev")
    have = {(o["kind"], o["metadata"]["name"]) for o in objects}
    for deployment in (o for o in objects if o["kind"] == "Deployment"):
        pod = deployment["spec"]["template"]["spec"]
        if "serviceAccountName" in pod:
            assert ("ServiceAccount", pod["serviceAccountName"]) in have
        for container in pod["containers"]:
            for env in container.get("env", []):
                ref = (env.get("valueFrom") or {}).get("secretKeyRef")
                if ref and not ref.get("optional"):
                    assert ("Secret", ref["name"]) in have, ref
        for volume in pod.get("volumes", []):
            if "configMap" in volume:
                assert ("ConfigMap", volume["configMap"]["name"]) in have
    for hpa in (o for o in objects if o["kind"] == "HorizontalPodAutoscaler"):
        assert (
            hpa["spec"]["scaleTargetRef"]["kind"],
            hpa["spec"]["scaleTargetRef"]["name"],
        ) in have
    prod = {(o["kind"], o["metadata"]["name"]) for o in built("overlays/prod")}
    assert ("Secret", "switchyard-admin") not in prod, "production secrets are not committed"
