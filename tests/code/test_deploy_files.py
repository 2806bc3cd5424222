"""The deployment files a user copies give containers the layout the container tier runs.

``tests/container/`` runs containers with ``CONTAINER_ENV``/``REPLICA_ENV`` and the volumes at
``DATA``, ``HOME`` and ``STATE``, and plays the Kubernetes manifests with podman; these checks
keep deploy/compose.yaml (which no test can run here: no registry for its PostgreSQL image),
the manifests and the image's set-up script on that same layout, with no secret written in them.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.container.podman import DATA, HOME, IMAGE_USER_UID, REPLICA_ENV, STATE

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MOUNTS = {DATA, HOME, STATE}


def kubernetes() -> dict[str, list[dict]]:
    by_kind: dict[str, list[dict]] = {}
    for document in yaml.safe_load_all((DEPLOY / "kubernetes" / "bouncer.yaml").read_text()):
        by_kind.setdefault(document["kind"], []).append(document)
    return by_kind


def test_the_compose_replicas_share_data_and_models_and_keep_their_own_state() -> None:
    services = yaml.safe_load((DEPLOY / "compose.yaml").read_text())["services"]
    replicas = {name: service for name, service in services.items() if name.startswith("bouncer")}
    assert len(replicas) == 2
    ports = set()
    states = set()
    for service in replicas.values():
        assert service["image"].startswith("${BOUNCER_IMAGE")
        env = service["environment"]
        assert REPLICA_ENV.items() <= env.items()
        assert env["BOUNCER_API_TOKEN"].startswith("${") and "${POSTGRES_PASSWORD" in env["BOUNCER_DATABASE_URL"]
        mounts = dict(reversed(volume.split(":", 1)) for volume in service["volumes"])
        assert set(mounts) == MOUNTS
        assert mounts[DATA] == "../data" and mounts[HOME] == "models"
        states.add(mounts[STATE])
        ports.add(service["ports"][0].split(":")[0])
        assert service["depends_on"]["db"]["condition"] == "service_healthy"
        assert "/readyz" in " ".join(service["healthcheck"]["test"])
    assert len(states) == 2 and len(ports) == 2
    assert "${POSTGRES_PASSWORD" in services["db"]["environment"]["POSTGRES_PASSWORD"]


def test_the_kubernetes_deployment_runs_the_image_as_the_tier_does() -> None:
    kinds = kubernetes()
    (deployment,) = kinds["Deployment"]
    spec = deployment["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == spec["securityContext"]["fsGroup"] == IMAGE_USER_UID
    assert spec["terminationGracePeriodSeconds"] >= 30
    (container,) = spec["containers"]
    plain = {v["name"]: v["value"] for v in container["env"] if "value" in v}
    assert REPLICA_ENV.items() <= plain.items()
    secret_refs = {v["name"]: v["valueFrom"]["secretKeyRef"] for v in container["env"] if "valueFrom" in v}
    assert set(secret_refs) == {"BOUNCER_API_TOKEN", "BOUNCER_DATABASE_URL"}
    (secret,) = kinds["Secret"]
    assert {ref["key"] for ref in secret_refs.values()} == set(secret["stringData"])
    assert {ref["name"] for ref in secret_refs.values()} == {secret["metadata"]["name"]}
    assert "change-me" in secret["stringData"]["api-token"]  # a placeholder, not a secret
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    assert set(mounts) == MOUNTS
    claims = {c["metadata"]["name"]: c for c in kinds["PersistentVolumeClaim"]}
    for path in (DATA, HOME):  # shared by every replica
        claim = claims[mounts[path]["persistentVolumeClaim"]["claimName"]]
        assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert "emptyDir" in mounts[STATE]  # each replica's own
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    (service,) = kinds["Service"]
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]


def test_the_image_makes_every_mount_point_its_users() -> None:
    script = (DEPLOY / "image-setup.sh").read_text()
    assert f"mkdir -p {DATA} {HOME} {STATE}" in script
    assert f'chown "$BENTO_USER:$BENTO_USER" {DATA} {HOME} {STATE}' in script


def test_the_container_page_shows_the_commands_the_tier_runs() -> None:
    """docs/container.md repeats the README's Container commands, which tests/container/ runs as written."""
    from tests.container.test_container import readme_commands

    page = (DEPLOY.parent / "docs" / "container.md").read_text()
    for command in readme_commands().values():
        assert command.split("  #")[0].rstrip() in page, command
