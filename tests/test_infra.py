"""infra/: every YAML parses (safe loader) and has the structure its tool needs; the images run as
non-root users. No cluster or Docker daemon is reachable here, so these are offline checks:
the cluster-launcher YAML against the JSON Schema that Ray itself ships, the Kubernetes
objects against the few rules this deployment promises (token auth, no public Service,
authenticated MLflow, non-root containers, GPUs only on workers)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

INFRA = Path(__file__).resolve().parents[1] / "infra"
YAML_FILES = sorted(INFRA.rglob("*.yaml"))
DOCKERFILES = sorted(INFRA.rglob("Dockerfile"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def k8s_objects() -> list[tuple[Path, dict[str, Any]]]:
    return [(p, d) for p in YAML_FILES for d in documents(p) if "apiVersion" in d]


def containers(obj: dict[str, Any]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """(pod spec, container) for every pod template anywhere in the object."""
    found = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("containers"), list):
                found.extend((node, c) for c in node["containers"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(obj)
    return found


def by_kind(kind: str) -> list[dict[str, Any]]:
    return [d for _, d in k8s_objects() if d["kind"] == kind]


def test_infra_holds_the_promised_files() -> None:
    names = {p.relative_to(INFRA).as_posix() for p in INFRA.rglob("*") if p.is_file()}
    assert {
        "Dockerfile",
        "ray-cluster.aws.yaml",
        "kuberay/raycluster.yaml",
        "kuberay/rayjob.yaml",
        "mlflow/mlflow.yaml",
        "mlflow/Dockerfile",
        "README.md",
    } <= names


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_every_yaml_parses_and_has_no_duplicate_keys_or_tabs(path: Path) -> None:
    text = path.read_text()
    assert "\t" not in text, "tabs in YAML"
    docs = documents(path)
    assert docs and all(isinstance(d, dict) for d in docs)

    class Strict(yaml.SafeLoader):
        pass

    def no_duplicates(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict:
        keys = [loader.construct_object(k) for k, _ in node.value]
        dup = {k for k in keys if keys.count(k) > 1}
        assert not dup, f"{path.name}:{node.start_mark.line + 1}: duplicate keys {dup}"
        return loader.construct_mapping(node)

    Strict.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, no_duplicates)
    list(yaml.load_all(text, Loader=Strict))  # noqa: S506 - a SafeLoader subclass


def test_cluster_launcher_yaml_matches_rays_own_schema() -> None:
    import jsonschema
    import ray

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = documents(INFRA / "ray-cluster.aws.yaml")[0]
    jsonschema.validate(config, schema)
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0 and "GPU" not in head["resources"]  # no fits on the head
    assert head["max_workers"] == 0
    [worker_name] = [n for n in types if n != config["head_node_type"]]
    worker = types[worker_name]
    assert worker["min_workers"] == 0 < worker["max_workers"] <= config["max_workers"]  # autoscales from zero
    assert re.match(r"(g|p)\d", worker["node_config"]["InstanceType"]), "workers must be GPU instances"
    head_start = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head_start  # Jobs API only through the SSH tunnel
    options = " ".join(config["docker"]["run_options"])
    assert "RAY_AUTH_MODE=token" in options and "RAY_AUTH_TOKEN_PATH" in options
    assert any(target.endswith(".ray/auth_token") for target in config["file_mounts"])


@pytest.mark.parametrize("obj", [d for _, d in k8s_objects()], ids=lambda d: f"{d['kind']}/{d['metadata']['name']}")
def test_kubernetes_objects_are_well_formed_and_run_as_non_root(obj: dict[str, Any]) -> None:
    assert re.fullmatch(r"[a-z0-9.-]+(/v\d+\w*)?|v1", obj["apiVersion"])
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])
    assert isinstance(obj["spec"], dict)
    if obj["kind"] == "Service":
        assert obj["spec"].get("type", "ClusterIP") == "ClusterIP", "no Service is exposed outside the cluster"
    for pod, container in containers(obj):
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"].get("runAsUser", 1) != 0
        assert container["securityContext"]["allowPrivilegeEscalation"] is False
        assert container["image"] and container["name"]
        assert "limits" in container["resources"], f"{container['name']} has no resource limits"
        for env in container.get("env", []):
            assert "value" in env or "valueFrom" in env
            if re.search(r"TOKEN|PASSWORD|SECRET", env["name"]):
                assert "valueFrom" in env, f"{env['name']} must come from a Secret, not a literal"


def test_raycluster_has_token_auth_a_cpu_head_and_autoscaling_gpu_workers() -> None:
    [cluster] = by_kind("RayCluster")
    spec = cluster["spec"]
    assert spec["authOptions"]["mode"] == "token"
    assert spec["enableInTreeAutoscaling"] is True
    assert tuple(map(int, spec["rayVersion"].split("."))) >= (2, 52)  # token auth needs Ray ≥ 2.52
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    assert all("nvidia.com/gpu" not in c["resources"].get("limits", {}) for _, c in containers(head))
    [group] = spec["workerGroupSpecs"]
    assert group["minReplicas"] == 0 < group["maxReplicas"]
    assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    assert all(c["resources"]["limits"]["nvidia.com/gpu"] == "1" for _, c in containers(group))


def test_rayjob_runs_a_sweep_from_object_storage_on_the_raycluster() -> None:
    [cluster], [job] = by_kind("RayCluster"), by_kind("RayJob")
    spec = job["spec"]
    assert spec["clusterSelector"]["ray.io/cluster"] == cluster["metadata"]["name"]
    words = shlex.split(spec["entrypoint"])
    assert words[:3] == ["dip", "sweep", "run"] and words[3].startswith("s3://") and words[3].endswith(".yaml")
    assert spec["submissionMode"] in {"K8sJobMode", "HTTPMode", "SidecarMode", "InteractiveMode"}
    env = {e["name"]: e for _, c in containers(spec["submitterPodTemplate"]) for e in c.get("env", [])}
    token_secret = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]["name"]
    assert token_secret == cluster["spec"]["authOptions"]["secretName"]


def test_mlflow_server_uses_postgres_s3_and_authentication() -> None:
    [deployment] = [d for d in by_kind("Deployment") if d["metadata"]["name"] == "mlflow"]
    [(_, server)] = containers(deployment)
    args = dict(a.lstrip("-").split("=", 1) for a in server["args"])
    assert args["app-name"] == "basic-auth"
    assert args["backend-store-uri"].startswith("postgresql://")
    assert args["artifacts-destination"].startswith("s3://")
    assert "allowed-hosts" in args
    env = {e["name"]: e for e in server["env"]}
    auth_path = Path(env["MLFLOW_AUTH_CONFIG_PATH"]["value"])
    mounts = {m["name"]: m["mountPath"] for m in server["volumeMounts"]}
    volumes = {v["name"]: v for v in deployment["spec"]["template"]["spec"]["volumes"]}
    [auth_volume] = [name for name, path in mounts.items() if Path(path) == auth_path.parent]
    assert "secret" in volumes[auth_volume]
    services = {s["metadata"]["name"]: s for s in by_kind("Service")}
    host = re.search(r"@([^:/]+):", args["backend-store-uri"]).group(1)
    assert host in services  # the database the server names is deployed here
    selector = deployment["spec"]["selector"]["matchLabels"]
    assert services["mlflow"]["spec"]["selector"] == selector


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.relative_to(INFRA).as_posix())
def test_dockerfiles_end_as_a_non_root_user(path: Path) -> None:
    lines = [line.strip() for line in path.read_text().replace("\\\n", " ").splitlines()]
    instructions = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    keywords = [i[0].upper() for i in instructions]
    assert keywords[0] in {"FROM", "ARG"} and "FROM" in keywords
    users = [i[1] for i in instructions if i[0].upper() == "USER"]
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}
    assert re.search(rf"useradd .*\b{re.escape(user)}\b", path.read_text()), f"user {user} is never created"
    assert keywords.index("USER") > max(i for i, k in enumerate(keywords) if k == "RUN"), "RUN after USER"


def test_project_image_has_cuda_torch_and_installs_the_project() -> None:
    text = (INFRA / "Dockerfile").read_text()
    base = re.search(r"ARG BASE_IMAGE=(\S+)", text).group(1)
    assert "cuda" in base and base.startswith("pytorch/pytorch:")
    assert re.search(r"pip install .*\s\.(\s|$)", text.replace("\\\n", " "))
    build = re.search(r"docker build -f infra/Dockerfile .*\s\.$", text, re.M)
    assert build, "the build command is documented in the Dockerfile"
    ignore = (INFRA / "Dockerfile.dockerignore").read_text().split()
    assert ignore[ignore.index("**") + 1 :] and "!data/" not in ignore  # default-deny context
