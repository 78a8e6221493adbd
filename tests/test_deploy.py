"""deploy/: every YAML parses, and the pieces refer to each other correctly (mounted files exist,
volumes and secrets are declared, env vars are real settings, ports and names agree, the
PrometheusRule is the rules files). No container engine here: these are static checks, plus
promtool's own check of prometheus.yml."""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

from monitor.config import OPTIONS

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
COMPOSE_DIR = DEPLOY / "compose"
K8S = DEPLOY / "k8s"
SETTINGS_ENV = {o.env for o in OPTIONS}
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"


def load_all(path: Path) -> list:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((COMPOSE_DIR / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def k8s() -> dict[str, dict]:
    docs = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load_all(path):
            docs[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return docs


@pytest.fixture(scope="module")
def prom() -> dict:
    return yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())


def test_every_yaml_file_under_deploy_parses():
    files = sorted(DEPLOY.rglob("*.yml")) + sorted(DEPLOY.rglob("*.yaml"))
    assert len(files) >= 12
    for path in files:
        assert load_all(path), path


# -- compose --------------------------------------------------------------------------------------------

def _env(service: dict) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(e.split("=", 1) for e in env)
    return {k: str(v) for k, v in env.items()}


def test_compose_mounts_exist_and_named_volumes_are_declared(compose):
    declared = set(compose.get("volumes", {}))
    for name, svc in compose["services"].items():
        for vol in svc.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (COMPOSE_DIR / source).resolve().exists(), f"{name}: {source} missing"
                assert (COMPOSE_DIR / source).resolve().is_relative_to(ROOT), f"{name}: {source} outside the repo"
            else:
                assert source in declared, f"{name}: volume {source} not declared"
        build = svc.get("build")
        if build:
            context = (COMPOSE_DIR / build["context"]).resolve()
            assert (context / build["dockerfile"]).is_file()
        for dep in svc.get("depends_on", []):
            assert dep in compose["services"], f"{name} depends on unknown {dep}"
        for secret in svc.get("secrets", []):
            assert secret in compose["secrets"], f"{name}: secret {secret} not declared"


def test_compose_secrets_are_files_outside_git(compose):
    tracked = subprocess.run(["git", "ls-files", "deploy/compose"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()
    for name, secret in compose["secrets"].items():
        path = (COMPOSE_DIR / secret["file"]).resolve()
        assert str(path.relative_to(ROOT)) not in tracked, f"secret {name} is committed"


def test_compose_env_vars_are_real_settings(compose):
    for name, svc in compose["services"].items():
        for key in _env(svc):
            if key.startswith("SATMON_"):
                assert key in SETTINGS_ENV, f"{name}: {key} is not a setting in monitor/config.py"
    workers = {n: s for n, s in compose["services"].items() if n.startswith("worker-")}
    assert len(workers) >= 2
    ids = [_env(s)["SATMON_WORKER_ID"] for s in workers.values()]
    assert len(set(ids)) == len(ids)


def test_compose_ports_names_and_prometheus_agree(compose, prom):
    services = compose["services"]
    [satmon_job] = [j for j in prom["scrape_configs"] if j["job_name"] == "satmon"]
    targets = {t for sc in satmon_job["static_configs"] for t in sc["targets"]}
    workers = {n: s for n, s in services.items() if n.startswith("worker-")}
    assert targets == {f"{n}:{_env(s)['SATMON_WEB_PORT']}" for n, s in workers.items()}
    for name, svc in workers.items():
        env = _env(svc)
        assert env["SATMON_WEB_HOST"] == "0.0.0.0"           # reachable from Prometheus
        assert urlparse(env["SATMON_BROKER"]).hostname in services
        am = urlparse(env["SATMON_ALERTMANAGER_URL"])
        assert am.hostname in services
        assert "--config.file=/etc/alertmanager/alertmanager.yml" in services[am.hostname]["command"]
    [am_target] = prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]
    assert am_target == f"{am.hostname}:{am.port}"
    ds = yaml.safe_load((DEPLOY / "grafana/provisioning/datasources/prometheus.yml").read_text())["datasources"][0]
    url = urlparse(ds["url"])
    assert url.hostname in services and f"127.0.0.1:{url.port}:{url.port}" in services[url.hostname]["ports"]
    # Kafka advertises the listener the workers use
    kafka = _env(services["kafka"])
    assert f"//{urlparse(_env(workers['worker-0'])['SATMON_BROKER']).netloc}" in kafka["KAFKA_ADVERTISED_LISTENERS"]
    assert "controller" in kafka["KAFKA_PROCESS_ROLES"]                   # KRaft, no ZooKeeper
    assert not any("zookeeper" in n for n in services)


def test_compose_mounts_what_prometheus_and_grafana_read(compose, prom):
    prom_vol = next(v for v in compose["services"]["prometheus"]["volumes"] if v.endswith(":/etc/prometheus:ro"))
    host_dir = (COMPOSE_DIR / prom_vol.split(":")[0]).resolve()
    for rule_file in prom["rule_files"]:
        assert (host_dir / rule_file).is_file()
    provider = yaml.safe_load((DEPLOY / "grafana/provisioning/dashboards/satmon.yml").read_text())["providers"][0]
    mounts = dict(v.split(":")[1::-1] for v in compose["services"]["grafana"]["volumes"] if v.startswith("."))
    dash_dir = (COMPOSE_DIR / mounts[provider["options"]["path"]]).resolve()
    assert {p.name for p in dash_dir.glob("*.json")} == {"satmon-noc.json", "satmon-model.json"}
    assert (COMPOSE_DIR / mounts["/etc/grafana/provisioning"]).resolve() == DEPLOY / "grafana" / "provisioning"


def test_simulator_command_uses_real_flags(compose):
    from monitor.commands import simulate

    import argparse

    parser = argparse.ArgumentParser()
    simulate.add_arguments(parser)
    args = parser.parse_args(compose["services"]["simulator"]["command"][1:])
    assert urlparse(args.broker).hostname == "kafka"


def test_prometheus_config_is_valid():
    proc = subprocess.run([PROMTOOL, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- kubernetes ----------------------------------------------------------------------------------------------

def test_kustomization_lists_every_manifest(k8s):
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kust["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}


def test_statefulset_volumes_service_and_probes(k8s):
    sts = k8s["StatefulSet/satmon-worker"]
    spec = sts["spec"]
    pod = spec["template"]["spec"]
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    volumes = {v["name"] for v in pod.get("volumes", [])} | {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    [container] = pod["containers"]
    for mount in container["volumeMounts"]:
        assert mount["name"] in volumes
    state = next(m for m in container["volumeMounts"] if m["name"] == "state")
    config = k8s["ConfigMap/satmon-config"]["data"]
    assert state["mountPath"] == config["SATMON_DATA_DIR"]   # RocksDB lives on the claim
    svc = k8s[f"Service/{spec['serviceName']}"]
    assert svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports["http"] == int(config["SATMON_WEB_PORT"])
    assert svc["spec"]["ports"][0]["targetPort"] in ports
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] in ports
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    annotations = spec["template"]["metadata"]["annotations"]
    assert int(annotations["prometheus.io/port"]) == ports["http"]
    secret = next(v for v in pod["volumes"] if "secret" in v)["secret"]
    paths = {i["path"] for i in secret["items"]}
    secret_mount = next(m for m in container["volumeMounts"] if m["name"] == "secrets")["mountPath"]
    for key in ("SATMON_PSEUDONYM_KEY_FILE", "SATMON_TOKENS_FILE"):
        assert Path(config[key]).parent == Path(secret_mount) and Path(config[key]).name in paths
    assert not [d for d in k8s.values() if d["kind"] == "Secret"], "no secret values in the repository"


def test_k8s_env_vars_are_real_settings(k8s):
    config = k8s["ConfigMap/satmon-config"]["data"]
    assert set(config) <= SETTINGS_ENV, set(config) - SETTINGS_ENV
    container = k8s["StatefulSet/satmon-worker"]["spec"]["template"]["spec"]["containers"][0]
    for env in container.get("env", []):
        assert env["name"] in SETTINGS_ENV
    assert container["envFrom"][0]["configMapRef"]["name"] == "satmon-config"


def test_servicemonitor_scrapes_the_workers_as_job_satmon(k8s):
    sm = k8s["ServiceMonitor/satmon-workers"]
    svc = k8s["Service/satmon-workers"]
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert sm["spec"]["endpoints"][0]["port"] == svc["spec"]["ports"][0]["name"]
    assert svc["metadata"]["labels"][sm["spec"]["jobLabel"]] == "satmon"   # the rules' job="satmon"


def test_prometheusrule_is_the_rules_files(k8s):
    rule = k8s["PrometheusRule/satmon"]
    groups = [g for p in sorted((DEPLOY / "prometheus" / "rules").glob("*.yml"))
              for g in yaml.safe_load(p.read_text())["groups"]]
    assert rule["spec"]["groups"] == groups
    spec = importlib.util.spec_from_file_location("satmon_k8s_generate", K8S / "generate.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert mod.main(["--check"]) == 0


def test_images_agree_with_the_package_version(compose, k8s):
    import monitor

    images = {svc.get("image") for n, svc in compose["services"].items() if n.startswith(("worker", "simulator"))}
    images.add(k8s["StatefulSet/satmon-worker"]["spec"]["template"]["spec"]["containers"][0]["image"])
    assert images == {f"satmon:{monitor.__version__}"}
    assert re.search(r"^FROM python:3\.11", (COMPOSE_DIR / "Dockerfile").read_text(), re.M)
