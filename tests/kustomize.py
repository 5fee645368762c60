"""A minimal `kustomize build`, for the features `deploy/` uses and no others.

No kustomize binary can be installed from PyPI, Debian or npm here (Debian's kubectl is
1.20, whose kustomize predates `patches`), so the tests build the overlays with this.
It implements exactly: `resources` (files and directories), `namespace` (including
ServiceAccount subjects of RoleBindings without a namespace), `images` (newName,
newTag), `configMapGenerator` and `secretGenerator` (files, literals, per-generator
`options.labels`) with `disableNameSuffixHash: true` only, and `patches` given as a
strategic-merge patch file whose kind and name pick the target (merge keys for the
lists Kubernetes merges by key: containers, env, volumes, ports, ...). Any other
kustomization field raises `Unsupported`, so it can never silently build something
different from kustomize. Where a real `kubectl` is present, the tests compare its
`kubectl kustomize` output with this one's.
"""

from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
SUPPORTED = {
    "apiVersion",
    "kind",
    "resources",
    "namespace",
    "images",
    "generatorOptions",
    "configMapGenerator",
    "secretGenerator",
    "patches",
}
CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "PersistentVolume",
    "StorageClass",
    "PriorityClass",
    "APIService",
}
# patchMergeKey of the lists that strategic merge patches merge element by element.
MERGE_KEYS = {
    "containers": "name",
    "initContainers": "name",
    "env": "name",
    "volumes": "name",
    "volumeMounts": "mountPath",
    "ports": "containerPort",
    "imagePullSecrets": "name",
}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}


class Unsupported(Exception):
    """The kustomization uses something this minimal build does not implement."""


def build(directory: Path) -> list[Obj]:
    """What `kustomize build DIRECTORY` yields, as a list of objects."""
    kustomization = _kustomization(directory)
    unknown = set(kustomization) - SUPPORTED
    if unknown:
        raise Unsupported(f"{directory}: {sorted(unknown)} not implemented")
    objects: list[Obj] = []
    for entry in kustomization.get("resources", []):
        path = directory / entry
        if path.is_dir():
            objects.extend(build(path))
        else:
            objects.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    options = kustomization.get("generatorOptions", {})
    for spec in kustomization.get("configMapGenerator", []):
        objects.append(_generate("ConfigMap", spec, options, directory))
    for spec in kustomization.get("secretGenerator", []):
        objects.append(_generate("Secret", spec, options, directory))
    for entry in kustomization.get("patches", []):
        if set(entry) != {"path"}:
            raise Unsupported(f"patches entry {entry}: only `path` is implemented")
        for patch in yaml.safe_load_all((directory / entry["path"]).read_text()):
            if patch:
                _apply_patch(objects, patch)
    namespace = kustomization.get("namespace")
    if namespace:
        for obj in objects:
            _set_namespace(obj, namespace)
    for image in kustomization.get("images", []):
        for obj in objects:
            _set_image(obj, image)
    return objects


def _kustomization(directory: Path) -> Obj:
    for name in ("kustomization.yaml", "kustomization.yml", "Kustomization"):
        if (directory / name).is_file():
            loaded: Obj = yaml.safe_load((directory / name).read_text())
            return loaded
    raise FileNotFoundError(f"no kustomization in {directory}")


def _generate(kind: str, spec: Obj, options: Obj, directory: Path) -> Obj:
    merged = {**options, **spec.get("options", {})}
    if not merged.get("disableNameSuffixHash"):
        raise Unsupported(f"{spec['name']}: name suffix hashes are not implemented")
    unknown = set(spec) - {"name", "files", "literals", "options", "type"}
    if unknown:
        raise Unsupported(f"{kind} generator fields {sorted(unknown)} not implemented")
    data: dict[str, str] = {}
    for file in spec.get("files", []):
        key, _, path = file.rpartition("=") if "=" in file else ("", "", file)
        data[key or Path(path).name] = (directory / path).read_text()
    for literal in spec.get("literals", []):
        key, _, value = literal.partition("=")
        data[key] = value
    obj: Obj = {"apiVersion": "v1", "kind": kind, "metadata": {"name": spec["name"]}}
    if merged.get("labels"):
        obj["metadata"]["labels"] = dict(merged["labels"])
    if kind == "Secret":
        obj["type"] = spec.get("type", "Opaque")
        obj["data"] = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        obj["data"] = data
    return obj


def _apply_patch(objects: list[Obj], patch: Obj) -> None:
    name = patch["metadata"]["name"]
    targets = [o for o in objects if o["kind"] == patch["kind"] and o["metadata"]["name"] == name]
    if len(targets) != 1:
        raise ValueError(f"patch for {patch['kind']}/{name} matches {len(targets)} objects")
    merged = _merge(targets[0], copy.deepcopy(patch))
    targets[0].clear()
    targets[0].update(merged)


def _merge(target: Any, patch: Any, field: str = "") -> Any:
    if isinstance(patch, dict) and isinstance(target, dict):
        out = dict(target)
        for key, value in patch.items():
            out[key] = _merge(target.get(key), value, key) if key in target else value
        return out
    if isinstance(patch, list) and isinstance(target, list) and field in MERGE_KEYS:
        # As kubectl's strategic merge orders them: the patch's items first (merged
        # into their originals), then the originals the patch did not mention.
        key = MERGE_KEYS[field]
        by_key = {item.get(key): item for item in target}
        patched = [_merge(by_key[i.get(key)], i) if i.get(key) in by_key else i for i in patch]
        named = {item.get(key) for item in patch}
        return patched + [copy.deepcopy(t) for t in target if t.get(key) not in named]
    return patch


def _set_namespace(obj: Obj, namespace: str) -> None:
    if obj["kind"] in CLUSTER_SCOPED:
        return
    obj["metadata"]["namespace"] = namespace
    if obj["kind"] in ("RoleBinding", "ClusterRoleBinding"):
        for subject in obj.get("subjects", []):
            if subject.get("kind") == "ServiceAccount" and not subject.get("namespace"):
                subject["namespace"] = namespace


def _set_image(obj: Obj, image: Obj) -> None:
    if obj["kind"] not in POD_TEMPLATE_KINDS:
        return
    pod = obj["spec"]["template"]["spec"]
    for container in pod.get("containers", []) + pod.get("initContainers", []):
        name, _, tag = container["image"].partition(":")
        if name != image["name"]:
            continue
        new_name = image.get("newName", name)
        new_tag = image.get("newTag", tag)
        container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name
