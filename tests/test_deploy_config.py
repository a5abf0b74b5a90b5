"""Static checks of the deployment files: compose schema, Kubernetes schemas, KServe CRD schemas, nginx -t, Dockerfiles.

Every artefact serves REST on 8000 and gRPC on 8001 (Triton's GRPCInferenceService, grpc.health.v1); the checks
below hold each of them to that.

The container itself is built and run by scripts/container-test (buildah; root only), the replicas
behind nginx by tests/test_deploy_scale.py.
"""

from __future__ import annotations

import copy
import json
import lzma
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy_helpers import (
    COMPOSE_FILE,
    NGINX_TEMPLATE,
    ROOT,
    interpolate,
    nginx_binary,
    nginx_prefix,
    nginx_test,
    render_nginx_conf,
)

COMPOSE_SCHEMA = ROOT / "tests" / "fixtures" / "compose" / "compose_spec.json"
K8S_DIR = ROOT / "deploy" / "k8s"
KSERVE_FILE = ROOT / "deploy" / "kserve" / "inferenceservice.yaml"
KSERVE_SCHEMAS = ROOT / "tests" / "fixtures" / "kserve"
K8S_VERSION = "1.30.0"


# -- docker-compose.yml ------------------------------------------------------------------------------
def compose_validator():
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(COMPOSE_SCHEMA.read_text())
    # The schema names draft 2019-09 (with a URI jsonschema does not know): use that draft explicitly.
    return jsonschema.Draft201909Validator(schema)


def compose_doc(env: dict[str, str] | None = None) -> dict:
    return interpolate(yaml.safe_load(COMPOSE_FILE.read_text()), env or {})


def schema_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in compose_validator().iter_errors(doc)]


def test_compose_file_matches_compose_spec_schema():
    assert schema_errors(compose_doc()) == []
    # and with the documented overrides (a host folder as the repository, 5 replicas)
    assert schema_errors(compose_doc({"SEPCONV_MODELS": "./models", "SEPCONV_REPLICAS": "5"})) == []


def test_compose_schema_check_catches_mistakes():
    doc = compose_doc()
    broken = copy.deepcopy(doc)
    broken["services"]["sepconv"]["healthcheck"]["intervall"] = "5s"  # a typo
    assert schema_errors(broken)
    broken = copy.deepcopy(doc)
    broken["services"]["replica"]["deploy"]["replicas"] = "three"
    assert schema_errors(broken)


def test_compose_services_are_wired_as_documented():
    doc = compose_doc({"SEPCONV_REPLICAS": "4"})
    services = doc["services"]
    # default service: no profile, published, health-checked through the image's python health check
    default = services["sepconv"]
    assert "profiles" not in default
    assert default["ports"] == ["8000:8000", "8001:8001"]  # REST, gRPC
    assert default["environment"]["SEPCONV_GRPC_PORT"] == "8001" and set(default["expose"]) == {"8000", "8001"}
    assert default["healthcheck"]["test"] == ["CMD", "python3", "/app/healthcheck.py"]
    assert "models:/app/models" in default["volumes"] and "models" in doc["volumes"]
    assert default["environment"]["SEPCONV_HOST"] == "0.0.0.0"
    # gpu profile: the CUDA Dockerfile and an NVIDIA device reservation
    gpu = services["sepconv-gpu"]
    assert gpu["profiles"] == ["gpu"] and gpu["build"]["dockerfile"] == "Dockerfile.cuda"
    (device,) = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert gpu["environment"]["SEPCONV_PROVIDERS"] == "auto"
    assert gpu["ports"] == ["8002:8000", "8003:8001"]  # beside the default service's 8000/8001
    assert gpu["environment"]["SEPCONV_GRPC_PORT"] == "8001"
    # scale profile: N replicas behind nginx running the repository's config
    assert services["replica"]["profiles"] == ["scale"] and services["replica"]["deploy"]["replicas"] == 4
    # the replicas share one trace folder (a named volume), so trace_url works through the balancer
    trace_dir = services["replica"]["environment"]["SEPCONV_TRACE_DIR"]
    assert f"traces:{trace_dir}" in services["replica"]["volumes"] and "traces" in doc["volumes"]
    assert "models:/app/models" in services["replica"]["volumes"]
    assert "ports" not in services["replica"]
    lb = services["lb"]
    assert lb["profiles"] == ["scale"]
    assert lb["depends_on"]["replica"]["condition"] == "service_healthy"
    assert "./deploy/nginx/nginx.conf:/etc/nginx/nginx.conf:ro" in lb["volumes"]
    assert lb["ports"] == ["8080:8080", "8081:8081"]  # REST and gRPC (HTTP/2) listeners of nginx.conf
    # every file the compose file points at exists
    for service in services.values():
        build = service.get("build")
        if build:
            assert (ROOT / build["context"] / build["dockerfile"]).is_file()
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), source
    # the nginx upstreams name the replica service on the ports the image listens on, REST and gRPC
    nginx = NGINX_TEMPLATE.read_text()
    assert "server replica:8000 " in nginx and "server replica:8001 " in nginx
    assert "listen 8080;" in nginx and "listen 8081 http2;" in nginx


# -- Kubernetes -----------------------------------------------------------------------------------------
def k8s_documents() -> list[tuple[str, dict]]:
    docs = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs += [(path.name, d) for d in yaml.safe_load_all(path.read_text()) if d]
    return docs


def test_kubernetes_manifests_validate_against_the_api_schemas():
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    docs = k8s_documents()
    assert {d["kind"] for _, d in docs} >= {"Deployment", "Service", "HorizontalPodAutoscaler"}
    for name, doc in docs:
        try:
            kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{name}: {exc}")
    # the validator really rejects a broken manifest
    deployment = copy.deepcopy(next(d for _, d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]["httpGet"]["port"] = [8000]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
    # ... and a grpc probe on a named port (the kubelet's grpc probe takes a number only)
    deployment = copy.deepcopy(next(d for _, d in docs if d["kind"] == "Deployment"))
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["grpc"]["port"] = "grpc"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)


def test_kubernetes_deployment_probes_security_and_autoscaling():
    docs = {d["kind"]: d for _, d in k8s_documents()}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    # readiness: the kubelet's grpc probe (grpc.health.v1 Check, service "" = the server's readiness) on the
    # container's gRPC port; liveness and startup on REST
    assert container["readinessProbe"]["grpc"].get("service", "") == ""
    assert container["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    port_names = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert port_names == {"http": 8000, "grpc": 8001}
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SEPCONV_PORT"] == "8000" and env["SEPCONV_GRPC_PORT"] == "8001"
    assert container["readinessProbe"]["grpc"]["port"] == port_names["grpc"]
    service = docs["Service"]
    assert service["spec"]["selector"] == docs["Deployment"]["spec"]["selector"]["matchLabels"]
    service_ports = {p["name"]: (p["port"], p["targetPort"]) for p in service["spec"]["ports"]}
    assert service_ports == {"http": (8000, "http"), "grpc": (8001, "grpc")}
    (grpc_port,) = [p for p in service["spec"]["ports"] if p["name"] == "grpc"]
    assert grpc_port["appProtocol"] == "kubernetes.io/h2c"
    hpa = docs["HorizontalPodAutoscaler"]
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] == docs["Deployment"]["metadata"]["name"]
    assert hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


# -- KServe ---------------------------------------------------------------------------------------------------
def kserve_documents() -> dict[str, dict]:
    return {d["kind"]: d for d in yaml.safe_load_all(KSERVE_FILE.read_text()) if d}


def strict(schema: object) -> object:
    """A CRD's structural schema with unknown fields refused (as ``kubectl apply --validate=strict`` does):
    ``additionalProperties: false`` wherever properties are listed and unknown fields are not preserved."""
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: strict(v) for k, v in schema.items()}
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields") \
            and "additionalProperties" not in out:
        out["additionalProperties"] = False
    return out


def kserve_validator(kind: str):
    jsonschema = pytest.importorskip("jsonschema")
    name = {"InferenceService": "inferenceservice_v1beta1", "ServingRuntime": "servingruntime_v1alpha1"}[kind]
    schema = json.loads(lzma.open(KSERVE_SCHEMAS / f"{name}_schema.json.xz").read())
    # OpenAPI v3 structural schemas are JSON Schema draft 4 plus x-kubernetes-* keywords (ignored here)
    return jsonschema.Draft4Validator(strict(schema))


def kserve_errors(doc: dict) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
            for e in kserve_validator(doc["kind"]).iter_errors(doc)]


def test_kserve_manifests_validate_against_the_published_crd_schemas():
    docs = kserve_documents()
    assert set(docs) == {"ServingRuntime", "InferenceService"}
    assert docs["InferenceService"]["apiVersion"] == "serving.kserve.io/v1beta1"
    assert docs["ServingRuntime"]["apiVersion"] == "serving.kserve.io/v1alpha1"
    for doc in docs.values():
        assert kserve_errors(doc) == [], doc["kind"]
    # the strict schemas do catch mistakes: a misspelt field, a value outside an enum, a wrong type
    isvc = copy.deepcopy(docs["InferenceService"])
    isvc["spec"]["predictor"]["minReplica"] = 1
    assert kserve_errors(isvc)
    isvc = copy.deepcopy(docs["InferenceService"])
    isvc["spec"]["predictor"]["scaleMetric"] = "latency"
    assert kserve_errors(isvc)
    runtime = copy.deepcopy(docs["ServingRuntime"])
    runtime["spec"]["containers"][0]["ports"][1]["containerPort"] = "8001"
    assert kserve_errors(runtime)


def test_kserve_runtime_pod_validates_against_the_kubernetes_schemas():
    """The runtime's containers and volumes make a valid Pod (probes included), by Kubernetes' own schemas."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    spec = kserve_documents()["ServingRuntime"]["spec"]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "sepconv-runtime"},
           "spec": {"containers": spec["containers"], "volumes": spec.get("volumes", [])}}
    try:
        kubernetes_validate.validate(pod, K8S_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(str(exc))


def test_kserve_inferenceservice_is_wired_as_documented():
    docs = kserve_documents()
    runtime, isvc = docs["ServingRuntime"], docs["InferenceService"]
    predictor = isvc["spec"]["predictor"]
    model = predictor["model"]
    # the predictor runs our runtime with the Open Inference Protocol (V2)
    assert model["runtime"] == runtime["metadata"]["name"] and model["protocolVersion"] == "v2"
    assert model["modelFormat"]["name"] in {f["name"] for f in runtime["spec"]["supportedModelFormats"]}
    assert {"v2", "grpc-v2"} <= set(runtime["spec"]["protocolVersions"])
    (container,) = runtime["spec"]["containers"]
    assert container["name"] == "kserve-container"
    # REST first (KServe exposes the first port on the Service's port 80), gRPC named h2c (appProtocol h2c)
    assert [(p["name"], p["containerPort"]) for p in container["ports"]] == [("http1", 8000), ("h2c", 8001)]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["SEPCONV_PORT"] == "8000" and env["SEPCONV_GRPC_PORT"] == "8001"
    assert container["readinessProbe"]["grpc"]["port"] == 8001
    assert container["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    assert container["startupProbe"]["httpGet"]["path"] == "/v2/health/ready"
    assert container["resources"]["requests"]["cpu"] and container["resources"]["limits"]["memory"]
    # two ports need KServe's raw (Standard) mode; HPA autoscaling on CPU
    annotations = isvc["metadata"]["annotations"]
    assert annotations["serving.kserve.io/deploymentMode"] in {"RawDeployment", "Standard"}
    assert annotations["serving.kserve.io/autoscalerClass"] == "hpa"
    assert 1 <= predictor["minReplicas"] <= predictor["maxReplicas"]
    assert predictor["scaleMetric"] == "cpu" and 0 < predictor["scaleTarget"] <= 100
    # the same image as the plain Kubernetes Deployment
    deployment = {d["kind"]: d for _, d in k8s_documents()}["Deployment"]
    assert container["image"] == deployment["spec"]["template"]["spec"]["containers"][0]["image"]


# -- nginx -------------------------------------------------------------------------------------------------
@pytest.fixture
def prefix():
    path = nginx_prefix()
    yield path
    shutil.rmtree(path, ignore_errors=True)


def test_nginx_config_passes_nginx_t(prefix: Path):
    if nginx_binary() is None:
        pytest.skip("nginx is not installed (apt-get install nginx-light)")
    conf = prefix / "nginx.conf"
    conf.write_text(render_nginx_conf(["127.0.0.1:8000"], "127.0.0.1:8080", prefix,
                                      grpc_upstreams=["127.0.0.1:8001"], grpc_listen="127.0.0.1:8081"))
    good = conf.read_text()
    result = nginx_test(conf, prefix)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    # and nginx -t does reject a broken edit of the same template, in the REST and in the gRPC block
    for before, after in (("proxy_next_upstream error", "proxy_next_upstream eror"),
                          ("grpc_next_upstream error", "grpc_next_upstream eror"),
                          ("grpc_pass grpc://", "grpc_pass grpcx://")):
        conf.write_text(good.replace(before, after))
        assert nginx_test(conf, prefix).returncode != 0, after


def test_nginx_config_retries_and_passive_health_checks():
    text = NGINX_TEMPLATE.read_text()
    assert "proxy_next_upstream error timeout http_502 http_503 non_idempotent;" in text
    assert "max_fails=" in text and "fail_timeout=" in text
    assert "client_max_body_size 128m;" in text
    assert "proxy_pass http://sepconv;" in text
    # gRPC: HTTP/2 listener, grpc_pass to the replicas' gRPC port, the same retry policy
    assert "listen 8081 http2;" in text and "grpc_pass grpc://sepconv_grpc;" in text
    assert "grpc_next_upstream error timeout non_idempotent;" in text


# -- Dockerfiles -------------------------------------------------------------------------------------------
def parsed(name: str):
    dockerfile = pytest.importorskip("dockerfile")  # Docker's own (Go) Dockerfile parser
    return dockerfile.parse_file(str(ROOT / name))


@pytest.mark.parametrize("name", ["Dockerfile", "Dockerfile.cuda"])
def test_dockerfile_parses_and_has_the_runtime_contract(name: str):
    commands = parsed(name)
    froms = [c for c in commands if c.cmd == "FROM"]
    assert len(froms) >= 2, "multi-stage: a builder and a runtime stage"
    stages = [c.value[2] for c in froms if len(c.value) == 3 and c.value[1].upper() == "AS"]
    assert stages[0] == "builder" and stages[-1] == "runtime"
    runtime = commands[commands.index(froms[-1]):]
    kinds = [c.cmd for c in runtime]
    (user,) = [c for c in runtime if c.cmd == "USER"]
    assert user.value[0].split(":")[0] not in ("0", "root")
    assert [c.value for c in runtime if c.cmd == "EXPOSE"] == [("8000", "8001")]  # REST, gRPC
    (health,) = [c for c in runtime if c.cmd == "HEALTHCHECK"]
    assert health.value[0] == "CMD" and health.value[1:] == ("python3", "/app/healthcheck.py")
    env = {}
    for c in runtime:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    assert env["SEPCONV_HOST"] == "0.0.0.0" and env["SEPCONV_PORT"] == "8000"
    assert env["SEPCONV_GRPC_PORT"] == "8001"
    assert env["SEPCONV_REPO"] == "/app/models"
    assert kinds.index("USER") < kinds.index("CMD")
    (cmd,) = [c for c in runtime if c.cmd == "CMD"]
    assert "sepconv serve" in " ".join(cmd.value)
    assert '--grpc-port "$SEPCONV_GRPC_PORT"' in " ".join(cmd.value)
    # models are exported from the catalog in the build and copied into the runtime stage
    builder_runs = " ".join(" ".join(c.value) for c in commands[:commands.index(froms[-1])] if c.cmd == "RUN")
    assert "sepconv export --catalog models/catalog.toml" in builder_runs
    copies = [c.value for c in runtime if c.cmd == "COPY"]
    assert ("/opt/models", "/app/models") in copies and ("deploy/healthcheck.py", "/app/healthcheck.py") in copies
    for c in runtime:
        if c.cmd == "COPY" and not any(f.startswith("--from=") for f in c.flags):
            for source in c.value[:-1]:
                assert (ROOT / source).exists(), source


def test_cuda_dockerfile_uses_onnxruntime_gpu_on_a_cuda_cudnn_base():
    commands = parsed("Dockerfile.cuda")
    args = dict(c.value[0].split("=", 1) for c in commands if c.cmd == "ARG" and "=" in c.value[0])
    assert args["BASE_IMAGE"].startswith("nvidia/cuda:12.") and "cudnn" in args["BASE_IMAGE"]
    assert "runtime" in args["BASE_IMAGE"]
    assert args["ORT_EXTRA"] == "gpu"
    import tomllib  # noqa: PLC0415

    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(req.startswith("onnxruntime-gpu") for req in extras["gpu"])
    env = {}
    for c in commands:
        if c.cmd == "ENV":
            env.update(zip(c.value[::2], c.value[1::2], strict=True))
    assert env["SEPCONV_PROVIDERS"] == "auto"  # CUDA when it starts, else CPU


def test_dockerignore_keeps_the_context_small_but_complete():
    patterns = [p.strip() for p in (ROOT / ".dockerignore").read_text().splitlines()
                if p.strip() and not p.startswith("#")]
    for excluded in (".git", ".venv", "models/*"):
        assert excluded in patterns
    assert "!models/catalog.toml" in patterns  # the build exports the catalog
    for needed in ("export", "service", "sepconv", "pyproject.toml", "deploy/healthcheck.py"):
        assert needed not in patterns


def test_container_test_script_is_executable_bash():
    script = ROOT / "scripts" / "container-test"
    assert script.stat().st_mode & stat.S_IXUSR
    assert script.read_text().startswith("#!/usr/bin/env bash")
    bash = shutil.which("bash")
    if bash:
        assert subprocess.run([bash, "-n", str(script)], capture_output=True).returncode == 0
    if os.geteuid() != 0:  # the documented skip: exit 0 with a reason
        result = subprocess.run([str(script)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0 and "SKIP:" in result.stdout


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker and subprocess.run([docker, "compose", "version"], capture_output=True).returncode == 0:
        return [docker, "compose"]
    legacy = shutil.which("docker-compose")
    return [legacy] if legacy else None


def test_compose_cli_accepts_the_file_when_installed():
    """`docker compose config` (or Debian's docker-compose) parses, interpolates and validates it; no daemon."""
    cli = compose_cli()
    if cli is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed")
    args = [*cli, "-f", str(COMPOSE_FILE), "--profile", "gpu", "--profile", "scale", "config"]
    env = {**os.environ, "SEPCONV_REPLICAS": "5"}
    result = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = yaml.safe_load(result.stdout)
    assert set(rendered["services"]) == {"sepconv", "sepconv-gpu", "replica", "lb"}
    assert rendered["services"]["replica"]["deploy"]["replicas"] == 5


# -- the image's health check script ---------------------------------------------------------------------------
def run_healthcheck(url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "SEPCONV_HEALTH_URL": url}
    return subprocess.run([sys.executable, str(ROOT / "deploy" / "healthcheck.py")], capture_output=True,
                          text=True, env=env, timeout=30)


def test_healthcheck_script_passes_only_on_a_ready_answer(tmp_path: Path):
    """deploy/healthcheck.py (the Dockerfile's HEALTHCHECK) against a real server: 0 on 200, 1 otherwise."""
    from sepconv.service.app import create_app  # noqa: PLC0415
    from sepconv.service.settings import Settings  # noqa: PLC0415
    from tests.serving import free_port, running_server  # noqa: PLC0415

    with running_server(create_app(Settings(repo=tmp_path, trace_dir=tmp_path / "traces"))) as url:
        assert run_healthcheck(f"{url}/v2/health/ready").returncode == 0
        not_ready = run_healthcheck(f"{url}/v2/models/absent/ready")  # a 4xx/5xx answer is unhealthy
        assert not_ready.returncode == 1 and "unhealthy" in not_ready.stderr
    refused = run_healthcheck(f"http://127.0.0.1:{free_port()}/v2/health/ready")  # nothing listening
    assert refused.returncode == 1 and "unhealthy" in refused.stderr
