"""The cloud packaging, checked without a container runtime: the Dockerfile copies what exists and probes
/healthz, the compose file runs the coordinator with Mosquitto and Redis, the Kubernetes manifests have
probes, a Service, an autoscaler, a ConfigMap and a Secret, and every settings file in them is one the
coordinator loads."""

from __future__ import annotations

import re
import tomllib
from typing import Any

import msgspec
import redis
import yaml

from coordinator.config import CoordinatorSettings
from tests.harness import ROOT, RedisServer

PACKAGING = ROOT / "packaging"


def test_the_dockerfile_copies_what_exists_and_checks_health() -> None:
    text = (PACKAGING / "docker" / "Dockerfile").read_text()
    for source in re.findall(r"^COPY (?!--from)(\S+)", text, flags=re.M):
        assert (ROOT / source).exists(), source
    assert '".[coordinator]"' in text and "/healthz" in text and "USER fleetedge" in text
    assert "EXPOSE 8080" in text


def test_the_shipped_redis_configuration_is_the_one_redis_runs(redis_server: RedisServer) -> None:
    # The fixture starts redis-server from packaging/docker/redis.conf: a key it rejects fails every Redis test.
    config = redis.Redis(port=redis_server.port).config_get("*")
    assert config["appendonly"] == "yes" and config["appendfsync"] == "everysec" and config["save"] == ""
    assert int(config["auto-aof-rewrite-min-size"]) == 512 * 2**20
    assert config["maxmemory-policy"] == "noeviction"


def test_compose_runs_the_coordinator_with_mosquitto_and_redis() -> None:
    compose = yaml.safe_load((PACKAGING / "docker" / "compose.yaml").read_text())
    services = compose["services"]
    assert set(services) == {"mosquitto", "redis", "coordinator"}
    assert services["coordinator"]["depends_on"] == ["mosquitto", "redis"]
    assert (ROOT / services["coordinator"]["build"]["dockerfile"]).exists()
    assert services["redis"]["command"] == ["redis-server", "/usr/local/etc/redis/redis.conf"]
    assert "./redis.conf:/usr/local/etc/redis/redis.conf:ro" in services["redis"]["volumes"]
    settings = msgspec.convert(tomllib.loads((PACKAGING / "docker" / "coordinator.toml").read_text()),
                               CoordinatorSettings)
    assert settings.broker.url == "mqtt://mosquitto:1883" and settings.store.redis_url.startswith("redis://redis:")


def test_kubernetes_has_probes_service_autoscaler_config_and_secret() -> None:
    docs: list[dict[str, Any]] = [d for d in yaml.safe_load_all((PACKAGING / "kubernetes" / "coordinator.yaml")
                                                                .read_text()) if d]
    kinds = {d["kind"]: d for d in docs}
    assert set(kinds) == {"ConfigMap", "Secret", "Deployment", "Service", "HorizontalPodAutoscaler"}
    container = kinds["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    for probe in ("readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/healthz"
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert kinds["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == kinds["Deployment"]["metadata"]["name"]
    settings = msgspec.convert(tomllib.loads(kinds["ConfigMap"]["data"]["coordinator.toml"]), CoordinatorSettings)
    # Replicas split the ingest and share the state.
    assert settings.broker.shared_group and settings.store.redis_url
    secret_files = set(kinds["Secret"]["stringData"])
    for path in (settings.broker.password_file, settings.store.redis_password_file, settings.models.public_key,
                 settings.models.url_key_file):
        assert path.startswith("/etc/fleetedge/secrets/") and path.rsplit("/", 1)[1] in secret_files, path
