"""The Helm chart, rendered by Helm's own Go engine (helm-python-sdk, no helm binary needed) and
validated against the Kubernetes JSON schemas bundled by kubernetes-validate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import helm_python as helm
import kubernetes_validate
import pytest
import yaml
from kubernetes_validate.utils import latest_version

from lorax_engine.cli import build_parser as engine_parser
from lorax_gateway.cli import build_parser as gateway_parser

from .dockerfile_parser import Dockerfile

CHART = Path(__file__).resolve().parents[2] / "charts" / "lorax"
# The chart's kubeVersion floor and the newest schema kubernetes-validate ships.
K8S_VERSIONS = ("1.25.0", latest_version())
Manifest = dict[str, Any]

SCENARIOS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "everything-on": {
        "imagePullSecrets": [{"name": "regcred"}],
        "gateway": {
            "replicas": 3,
            "service": {"type": "LoadBalancer", "annotations": {"lb": "internal"}},
            "ingress": {
                "enabled": True,
                "className": "nginx",
                "annotations": {"nginx.ingress.kubernetes.io/proxy-buffering": "off"},
                "hosts": ["llm.example.com", "llm2.example.com"],
                "tls": [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}],
            },
            "extraArgs": ["--max-concurrent-requests", "512"],
            "env": [{"name": "TZ", "value": "UTC"}],
            "podAnnotations": {"team": "ml"},
            "nodeSelector": {"pool": "cpu"},
        },
        "engine": {
            "replicas": 3,
            "modelId": "mistralai/Mistral-7B-Instruct-v0.2",
            "dtype": "bfloat16",
            "gpus": 2,
            "runtimeClassName": "nvidia",
            "hfToken": {"secretName": "hf", "secretKey": "token"},
            "adapters": {
                "maxActive": 128,
                "maxRank": 16,
                "dtype": "fp8",
                "source": "s3",
                "localClaimName": "team-adapters",
                "s3SecretName": "aws",
            },
            "extraArgs": ["--max-batch-total-tokens", "65536"],
            "env": [{"name": "TZ", "value": "UTC"}],
            "cache": {"persistence": True, "size": "200Gi", "storageClass": "fast"},
            "tolerations": [
                {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}
            ],
        },
        "tenants": {"enabled": True, "content": '[tenants.acme]\nkey_sha256 = "ab"\n'},
        "otel": {"endpoint": "http://otel-collector.observability:4318"},
        "metrics": {"serviceMonitor": {"enabled": True, "labels": {"release": "prom"}}},
        "networkPolicy": {"engineClientNamespaces": {"kubernetes.io/metadata.name": "debug"}},
    },
    "cpu-only": {"gateway": {"replicas": 1}, "engine": {"gpus": 0}},
    "existing-tenants-secret": {"tenants": {"enabled": True, "existingSecret": "my-tenants"}},
}


def render(values: dict[str, Any] | None = None, release: str = "demo") -> list[Manifest]:
    """All manifests of a `helm template` of the chart with `values`."""
    with helm.Chart.load(CHART) as chart:
        files = chart.render(values, name=release, namespace="ml")
    manifests: list[Manifest] = []
    for path, text in sorted(files.items()):
        if path.endswith(".yaml"):
            manifests.extend(doc for doc in yaml.safe_load_all(text) if doc)
    return manifests


def of_kind(manifests: list[Manifest], kind: str) -> list[Manifest]:
    return [m for m in manifests if m["kind"] == kind]


def component(manifests: list[Manifest], kind: str, name: str) -> list[Manifest]:
    return [
        m
        for m in of_kind(manifests, kind)
        if m["metadata"]["labels"]["app.kubernetes.io/component"] == name
    ]


def container(deployment: Manifest) -> Manifest:
    containers = deployment["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def env_of(deployment: Manifest) -> dict[str, Any]:
    return {e["name"]: e for e in container(deployment).get("env", [])}


@pytest.fixture(scope="module", params=list(SCENARIOS))
def scenario(request: pytest.FixtureRequest) -> tuple[dict[str, Any], list[Manifest]]:
    values = SCENARIOS[request.param]
    return values, render(values)


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_helm_lint_is_clean(name: str) -> None:
    report = helm.lint(CHART, SCENARIOS[name], strict=True)
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; 1 (info: "icon is recommended") is fine.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_manifests_match_the_kubernetes_schemas(
    scenario: tuple[dict[str, Any], list[Manifest]], version: str
) -> None:
    _values, manifests = scenario
    for manifest in manifests:
        if manifest["apiVersion"] == "monitoring.coreos.com/v1":
            continue  # a CRD: checked in test_service_monitor_scrapes_every_component
        # strict: unknown fields are errors too (a typo'd key would otherwise be silently dropped).
        kubernetes_validate.validate(manifest, version, strict=True)


def test_schema_validation_does_catch_a_broken_manifest() -> None:
    (gateway,) = component(render(), "Deployment", "gateway")
    container(gateway)["readinessProbe"]["httpGet"]["pth"] = "/health"  # misspelled key
    with pytest.raises(kubernetes_validate.ValidationError, match="pth"):
        kubernetes_validate.validate(gateway, K8S_VERSIONS[-1], strict=True)
    del container(gateway)["readinessProbe"]["httpGet"]["pth"]
    container(gateway)["ports"][0]["containerPort"] = "8080"  # a string where an int belongs
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(gateway, K8S_VERSIONS[-1], strict=True)


def test_names_fit_kubernetes_limits_with_a_long_release_name() -> None:
    manifests = render(SCENARIOS["everything-on"], release="a" * 53)
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        assert len(name) <= 63, name
        assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", name), name


def test_gateway_routes_to_every_engine_with_a_valid_command(
    scenario: tuple[dict[str, Any], list[Manifest]],
) -> None:
    values, manifests = scenario
    (gateway,) = component(manifests, "Deployment", "gateway")
    args = container(gateway)["args"]
    parsed = gateway_parser().parse_args(args)  # every flag is one the gateway knows
    assert parsed.command == "serve"
    assert parsed.host == "0.0.0.0"
    port = container(gateway)["ports"][0]
    assert port == {"name": "http", "containerPort": parsed.port, "protocol": "TCP"}

    engines = component(manifests, "Deployment", "engine")
    services = component(manifests, "Service", "engine")
    replicas = values.get("engine", {}).get("replicas", 1)
    assert len(engines) == len(services) == replicas
    expected_urls: list[str] = []
    for engine, service in zip(engines, services, strict=True):
        assert engine["spec"]["replicas"] == 1
        assert engine["spec"]["strategy"] == {"type": "Recreate"}
        pod_labels = engine["spec"]["template"]["metadata"]["labels"]
        selector = service["spec"]["selector"]
        assert selector.items() <= pod_labels.items()
        for other in engines:
            if other is not engine:
                other_labels = other["spec"]["template"]["metadata"]["labels"]
                assert not selector.items() <= other_labels.items(), "a Service spans engines"
        (service_port,) = service["spec"]["ports"]
        assert service_port["targetPort"] == container(engine)["ports"][0]["name"]
        expected_urls.append(f"http://{service['metadata']['name']}:{service_port['port']}")
    assert parsed.engine_url == expected_urls


def test_probes_use_health(scenario: tuple[dict[str, Any], list[Manifest]]) -> None:
    _values, manifests = scenario
    (gateway,) = component(manifests, "Deployment", "gateway")
    main = container(gateway)
    assert main["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # /health reports the engine, so liveness must not use it: an engine outage would otherwise
    # restart every gateway instead of letting them recover.
    assert main["livenessProbe"]["tcpSocket"] == {"port": "http"}
    for engine in component(manifests, "Deployment", "engine"):
        main = container(engine)
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert main[probe]["httpGet"] == {"path": "/health", "port": "http"}, probe
        startup = main["startupProbe"]
        assert startup["periodSeconds"] * startup["failureThreshold"] >= 600


def test_engines_get_their_gpus(scenario: tuple[dict[str, Any], list[Manifest]]) -> None:
    values, manifests = scenario
    gpus = values.get("engine", {}).get("gpus", 1)
    for engine in component(manifests, "Deployment", "engine"):
        resources = container(engine)["resources"]
        if gpus:
            assert resources["limits"]["nvidia.com/gpu"] == gpus
            assert resources["requests"]["nvidia.com/gpu"] == gpus
        else:
            assert "nvidia.com/gpu" not in resources["limits"]
    (gateway,) = component(manifests, "Deployment", "gateway")
    assert "nvidia.com/gpu" not in container(gateway)["resources"]["limits"]


def test_engine_args_and_environment(scenario: tuple[dict[str, Any], list[Manifest]]) -> None:
    values, manifests = scenario
    engine_values = values.get("engine", {})
    for engine in component(manifests, "Deployment", "engine"):
        args = container(engine)["args"]
        parsed = engine_parser().parse_args(args)  # every flag is one the engine knows
        assert parsed.command == "serve"
        assert parsed.host == "0.0.0.0"
        assert parsed.port == container(engine)["ports"][0]["containerPort"]
        assert parsed.model_id == engine_values.get("modelId", "demo")
        assert parsed.dtype == engine_values.get("dtype")
        adapters = {"maxActive": 32, "maxRank": 64, **engine_values.get("adapters", {})}
        assert parsed.max_active_adapters == adapters["maxActive"]
        assert parsed.max_lora_rank == adapters["maxRank"]
        assert parsed.lora_dtype == (adapters.get("dtype") or "auto")
        assert parsed.adapter_source == adapters.get("source", "")
        pod = engine["spec"]["template"]["spec"]
        if "localClaimName" in adapters:
            # Local adapters come from a claim mounted read-only where --local-adapter-root says.
            (mount,) = [m for m in container(engine)["volumeMounts"] if m["name"] == "adapters"]
            assert mount["readOnly"] is True
            assert [str(root) for root in parsed.local_adapter_root] == [mount["mountPath"]]
            (volume,) = [v for v in pod["volumes"] if v["name"] == "adapters"]
            assert volume["persistentVolumeClaim"] == {
                "claimName": adapters["localClaimName"],
                "readOnly": True,
            }
        else:
            assert not parsed.local_adapter_root
        if "s3SecretName" in adapters:
            assert container(engine)["envFrom"] == [{"secretRef": {"name": "aws"}}]
        else:
            assert "envFrom" not in container(engine)
        extra = engine_values.get("extraArgs", [])
        assert args[len(args) - len(extra) :] == extra
        env = env_of(engine)
        if "hfToken" in engine_values:
            assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
        else:
            assert "HF_TOKEN" not in env


def test_otlp_endpoint_reaches_the_gateway(
    scenario: tuple[dict[str, Any], list[Manifest]],
) -> None:
    values, manifests = scenario
    (gateway,) = component(manifests, "Deployment", "gateway")
    parsed = gateway_parser().parse_args(container(gateway)["args"])
    assert parsed.otlp_endpoint == values.get("otel", {}).get("endpoint")


def test_tenants_file_is_mounted_from_a_secret() -> None:
    content = SCENARIOS["everything-on"]["tenants"]["content"]
    manifests = render(SCENARIOS["everything-on"])
    (secret,) = of_kind(manifests, "Secret")
    assert secret["stringData"]["tenants.toml"] == content
    (gateway,) = component(manifests, "Deployment", "gateway")
    pod = gateway["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == secret["metadata"]["name"]
    (mount,) = [m for m in container(gateway)["volumeMounts"] if m["name"] == volume["name"]]
    assert mount["readOnly"] is True
    parsed = gateway_parser().parse_args(container(gateway)["args"])
    assert str(parsed.tenants_file) == f"{mount['mountPath']}/tenants.toml"
    # The key file is only readable by its owner's group (fsGroup), not world-readable.
    assert volume["secret"]["defaultMode"] == 0o440

    # Changing the file rolls the gateways: the pod template changes with it.
    changed = {**SCENARIOS["everything-on"], "tenants": {"enabled": True, "content": "x = 1\n"}}
    (rolled,) = component(render(changed), "Deployment", "gateway")
    assert (
        rolled["spec"]["template"]["metadata"]["annotations"]["checksum/tenants"]
        != gateway["spec"]["template"]["metadata"]["annotations"]["checksum/tenants"]
    )


def test_existing_tenants_secret_is_used_as_is() -> None:
    manifests = render(SCENARIOS["existing-tenants-secret"])
    assert of_kind(manifests, "Secret") == []
    (gateway,) = component(manifests, "Deployment", "gateway")
    volumes = gateway["spec"]["template"]["spec"]["volumes"]
    assert [v["secret"]["secretName"] for v in volumes if "secret" in v] == ["my-tenants"]
    parsed = gateway_parser().parse_args(container(gateway)["args"])
    assert parsed.tenants_file is not None


def test_auth_off_by_default_and_tenants_need_a_source() -> None:
    (gateway,) = component(render(), "Deployment", "gateway")
    assert "--tenants-file" not in container(gateway)["args"]
    with pytest.raises(
        helm.HelmRenderError, match=re.escape("tenants.existingSecret or tenants.content")
    ):
        render({"tenants": {"enabled": True}})


def pod_labels(deployment: Manifest) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def test_service_monitor_scrapes_the_gateways() -> None:
    manifests = render(SCENARIOS["everything-on"])
    (monitor,) = of_kind(manifests, "ServiceMonitor")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["metadata"]["labels"]["release"] == "prom"
    assert monitor["spec"]["namespaceSelector"] == {"matchNames": ["ml"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["path"] == "/metrics"
    selector = monitor["spec"]["selector"]["matchLabels"]
    services = of_kind(manifests, "Service")
    # Only the gateways: their /metrics carry the engines' series, and the engines accept
    # connections from gateways alone.
    scraped = [s for s in services if selector.items() <= s["metadata"]["labels"].items()]
    assert scraped == component(manifests, "Service", "gateway")
    (service,) = scraped
    assert endpoint["port"] in [p["name"] for p in service["spec"]["ports"]]
    assert of_kind(render(), "ServiceMonitor") == []


def test_only_gateways_reach_the_engines() -> None:
    manifests = render(SCENARIOS["everything-on"])
    (policy,) = of_kind(manifests, "NetworkPolicy")
    selector = policy["spec"]["podSelector"]["matchLabels"]
    for deployment in of_kind(manifests, "Deployment"):
        selected = selector.items() <= pod_labels(deployment).items()
        assert selected == (deployment in component(manifests, "Deployment", "engine"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    (rule,) = policy["spec"]["ingress"]
    gateway_source, namespace_source = rule["from"]
    (gateway,) = component(manifests, "Deployment", "gateway")
    assert gateway_source["podSelector"]["matchLabels"].items() <= pod_labels(gateway).items()
    assert namespace_source == {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "debug"}}
    }
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    (default_policy,) = of_kind(render(), "NetworkPolicy")
    (default_rule,) = default_policy["spec"]["ingress"]
    assert len(default_rule["from"]) == 1
    assert of_kind(render({"networkPolicy": {"enabled": False}}), "NetworkPolicy") == []


def test_pods_run_unprivileged_as_the_image_user(
    scenario: tuple[dict[str, Any], list[Manifest]], dockerfiles: dict[str, Dockerfile]
) -> None:
    _values, manifests = scenario
    for deployment in of_kind(manifests, "Deployment"):
        name = deployment["metadata"]["labels"]["app.kubernetes.io/component"]
        pod = deployment["spec"]["template"]["spec"]
        uid, _, gid = dockerfiles[name].final.last("USER").args.partition(":")
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == int(uid)
        assert pod["securityContext"]["runAsGroup"] == int(gid)
        assert pod["automountServiceAccountToken"] is False
        security = container(deployment)["securityContext"]
        assert security["allowPrivilegeEscalation"] is False
        assert security["readOnlyRootFilesystem"] is True
        assert security["capabilities"] == {"drop": ["ALL"]}
        # With a read-only root, every path the image writes to must be a mounted volume.
        mounts = [m["mountPath"] for m in container(deployment)["volumeMounts"]]
        assert "/tmp" in mounts
        for variable, path in dockerfiles[name].final.env().items():
            if variable.endswith(("_HOME", "_CACHE", "_CACHE_DIR")):
                assert any(path.startswith(m + "/") for m in mounts), f"{variable}={path}"
        assert container(deployment)["ports"][0]["containerPort"] == int(
            dockerfiles[name].final.last("EXPOSE").args
        )


def test_engine_cache_persistence() -> None:
    manifests = render(SCENARIOS["everything-on"])
    claims = of_kind(manifests, "PersistentVolumeClaim")
    engines = component(manifests, "Deployment", "engine")
    assert len(claims) == len(engines) == 3
    for claim, engine in zip(claims, engines, strict=True):
        assert claim["spec"]["resources"]["requests"]["storage"] == "200Gi"
        assert claim["spec"]["storageClassName"] == "fast"
        assert claim["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        volumes = {v["name"]: v for v in engine["spec"]["template"]["spec"]["volumes"]}
        assert volumes["data"]["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    (engine,) = component(render(), "Deployment", "engine")
    volumes = {v["name"]: v for v in engine["spec"]["template"]["spec"]["volumes"]}
    assert volumes["data"] == {"name": "data", "emptyDir": {"sizeLimit": "100Gi"}}
    assert of_kind(render(), "PersistentVolumeClaim") == []


def test_ingress_routes_every_host_to_the_gateway_service() -> None:
    manifests = render(SCENARIOS["everything-on"])
    (ingress,) = of_kind(manifests, "Ingress")
    (service,) = component(manifests, "Service", "gateway")
    assert ingress["spec"]["ingressClassName"] == "nginx"
    assert ingress["spec"]["tls"] == [{"secretName": "llm-tls", "hosts": ["llm.example.com"]}]
    assert [rule["host"] for rule in ingress["spec"]["rules"]] == [
        "llm.example.com",
        "llm2.example.com",
    ]
    for rule in ingress["spec"]["rules"]:
        (path,) = rule["http"]["paths"]
        assert path["path"] == "/"
        backend = path["backend"]["service"]
        assert backend["name"] == service["metadata"]["name"]
        assert backend["port"]["name"] in [p["name"] for p in service["spec"]["ports"]]
    assert of_kind(render(), "Ingress") == []
    with pytest.raises(helm.HelmRenderError, match=re.escape("gateway.ingress.hosts")):
        render({"gateway": {"ingress": {"enabled": True}}})


def test_disruption_budget_only_with_spare_gateways() -> None:
    (budget,) = of_kind(render(), "PodDisruptionBudget")
    (gateway,) = component(render(), "Deployment", "gateway")
    assert budget["spec"]["minAvailable"] == 1
    assert budget["spec"]["selector"] == gateway["spec"]["selector"]
    assert of_kind(render(SCENARIOS["cpu-only"]), "PodDisruptionBudget") == []


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"engine": {"modelid": "x"}}, "additional properties 'modelid'"),
        ({"engine": {"replicas": 0}}, "/engine/replicas"),
        ({"engine": {"dtype": "fp8"}}, "/engine/dtype"),
        ({"engine": {"adapters": {"source": "gcs"}}}, "/engine/adapters/source"),
        ({"gateway": {"port": "8080"}}, "/gateway/port"),
        ({"otel": {"endpoint": "collector:4318"}}, "/otel/endpoint"),
    ],
)
def test_values_schema_rejects_mistakes(values: dict[str, Any], complaint: str) -> None:
    with pytest.raises(helm.HelmValuesError, match=re.escape(complaint)):
        render(values)
