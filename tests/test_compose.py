"""The production stack's files: ``docker-compose config`` accepts them, and they agree.

There is no Docker engine here, so nothing is started: ``docker-compose config`` validates the file
against its schema and interpolates ``.env.example`` into it, and the tests read its normalized
output. The README's production section is checked against the same output, so the commands it
documents are the ones the stack runs.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest

from tests.services import unavailable

ROOT = Path(__file__).resolve().parent.parent
SERVICES = {"redis", "postgres", "migrate", "worker", "beat", "flower", "review"}
LONG_RUNNING = SERVICES - {"migrate"}
# Set in .env for compose to interpolate; not read by the digits code itself.
COMPOSE_ONLY = {
    "DIGITS_WORKER_CONCURRENCY",
    "DIGITS_INBOX_DIR",
    "DIGITS_DONE_DIR",
    "DIGITS_IMAGE",
    "DIGITS_REVIEW_PORT",
}


def compose(*args: str, env_file: Path) -> subprocess.CompletedProcess:
    binary = shutil.which("docker-compose")
    if binary is None:
        unavailable("docker-compose not installed (apt-get install docker-compose)")
    # A clean environment: the developer's own REDIS_PASSWORD or .env must not leak in.
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(env_file.parent)}
    argv = [binary, "--project-directory", str(ROOT), "-f", str(ROOT / "docker-compose.yml")]
    argv += ["--env-file", str(env_file), *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60)


@pytest.fixture(scope="module")
def config() -> str:
    done = compose("config", env_file=ROOT / ".env.example")
    assert done.returncode == 0, done.stderr
    return done.stdout


def blocks(text: str, indent: int) -> dict[str, str]:
    """The ``key: ...`` entries at ``indent`` spaces: a scalar's value, or the lines under the key.

    Enough YAML for docker-compose's normalized output, which prints a list at its key's depth.
    """
    found: dict[str, list[str]] = {}
    current = None
    for line in text.splitlines():
        stripped = line.strip()
        depth = len(line) - len(line.lstrip(" "))
        if depth == indent and stripped.startswith("- ") and current is not None:
            found[current].append(line)
        elif depth == indent:
            current, _, value = stripped.partition(":")
            found[current] = [value.strip()] if value.strip() else []
        elif depth < indent:
            current = None
        elif current is not None:
            found[current].append(line)
    return {name: "\n".join(lines) for name, lines in found.items()}


def services(config: str) -> dict[str, dict[str, str]]:
    top = blocks(config, 0)
    return {name: blocks(body, 4) for name, body in blocks(top["services"], 2).items()}


def command(service: dict[str, str]) -> str:
    """The service's command as one shell line (docker-compose prints it as a list, folding a
    long item onto more lines)."""
    tokens: list[str] = []
    for line in service["command"].splitlines():
        item = re.match(r"^\s*- (.*)$", line)
        if item:
            tokens.append(item.group(1))
        elif tokens:
            tokens[-1] += " " + line.strip()
    return " ".join(token.strip("'\"") for token in tokens)


def environment(service: dict[str, str]) -> dict[str, str]:
    pairs = re.findall(r"^\s*(\w+): (.*)$", service["environment"], re.MULTILINE)
    return {name: value.strip("'") for name, value in pairs}


def readme_production() -> str:
    text = (ROOT / "README.md").read_text()
    assert "\n## Production\n" in text
    return text.split("\n## Production\n", 1)[1]


def test_the_stack_has_every_service_with_health_checks(config):
    stack = services(config)
    assert set(stack) == SERVICES
    for name in LONG_RUNNING:
        assert "test" in stack[name]["healthcheck"], name
        assert stack[name]["restart"] == "unless-stopped", name
    assert stack["migrate"]["restart"] == '"no"'  # a one-shot
    redis = command(stack["redis"])
    assert "--appendonly yes" in redis and "--requirepass" in redis
    assert "redis-data:/data" in stack["redis"]["volumes"]
    assert "postgres-data:/var/lib/postgresql/data" in stack["postgres"]["volumes"]
    assert set(blocks(config, 0)["volumes"].split()) >= {"redis-data:", "postgres-data:"}
    assert command(stack["migrate"]) == "digits migrate"


def test_workers_scale_and_wait_for_the_migration(config):
    worker = services(config)["worker"]
    # Anything fixed per container would make a second replica collide.
    assert "container_name" not in worker and "ports" not in worker and "hostname" not in worker
    depends = blocks(worker["depends_on"], 6)
    assert "service_completed_successfully" in depends["migrate"]
    assert "service_healthy" in depends["redis"]
    assert "/data/inbox" in worker["volumes"] and "/data/done" in worker["volumes"]
    assert command(worker).startswith(
        "celery -A digits.worker.queue.celery_app worker --pool prefork"
    )


def test_every_digits_service_gets_the_same_urls_with_the_passwords(config):
    stack = services(config)
    for name in ("migrate", "worker", "beat", "flower", "review"):
        env = environment(stack[name])
        assert env["DIGITS_BROKER_URL"] == "redis://:change-me-redis@redis:6379/0", name
        assert env["DIGITS_DATABASE_URL"] == (
            "postgresql+psycopg://digits:change-me-postgres@postgres:5432/digits"
        ), name
        assert env["DIGITS_INGEST_INBOX"] == "/data/inbox"
        assert env["DIGITS_INGEST_SCHEDULE"] == "0 2 * * *"
        # Submitters (digits enqueue in a worker container, the scheduled ingestion) and workers
        # sign and verify chunk messages with one key; containers share no key file.
        assert env["DIGITS_MESSAGE_KEY"] == "change-me-message-key-at-least-32-characters", name
    assert environment(stack["flower"])["FLOWER_BASIC_AUTH"] == "admin:change-me-flower"


def test_the_review_station_is_loopback_only_and_signs_its_sessions(config):
    review = services(config)["review"]
    assert command(review) == "digits review-server --host 0.0.0.0 --port 8000"
    assert "127.0.0.1" in review["ports"] and "8000" in review["ports"]
    env = environment(review)
    assert env["DIGITS_STATION_SECRET"] == "change-me-station-secret-at-least-32-characters"
    assert env["DIGITS_STATION_HTTPS"] == "1"
    assert "service_completed_successfully" in blocks(review["depends_on"], 6)["migrate"]


def test_missing_passwords_are_refused(tmp_path):
    partial = tmp_path / "partial.env"
    partial.write_text("POSTGRES_PASSWORD=x\nFLOWER_PASSWORD=y\n")
    done = compose("config", "-q", env_file=partial)
    assert done.returncode != 0
    assert "set REDIS_PASSWORD in .env" in done.stderr


def test_env_example_and_compose_file_use_the_same_variables():
    example = {
        line.split("=", 1)[0]
        for line in (ROOT / ".env.example").read_text().splitlines()
        if re.match(r"^[A-Z_]+=", line)
    }
    used = set(re.findall(r"\$\{([A-Z_]+)", (ROOT / "docker-compose.yml").read_text()))
    assert example == used
    settings = (ROOT / "worker" / "config.py").read_text()
    for name in sorted(n for n in example if n.startswith("DIGITS_")):
        assert name in COMPOSE_ONLY or f'"{name}"' in settings, name
    production = readme_production()
    for name in ("REDIS_PASSWORD", "POSTGRES_PASSWORD", "FLOWER_PASSWORD", *COMPOSE_ONLY):
        assert name in production, name


def test_readme_documents_the_commands_the_stack_runs(config):
    production = readme_production()
    stack = services(config)
    for name in SERVICES:
        assert f"`{name}`" in production, name
    assert command(stack["worker"]) in production
    assert command(stack["flower"]) in production
    beat = command(stack["beat"])
    assert beat.split(" --schedule")[0] in production  # the schedule file lives elsewhere
    for line in ("docker-compose up -d --build", "--scale worker=", "digits migrate", "pg_dump"):
        assert line in production, line


def test_image_runs_unprivileged_with_the_model_inside():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", dockerfile, re.MULTILINE)
    users = re.findall(r"^USER (\S+)$", dockerfile, re.MULTILINE)
    assert users and users[-1] not in ("root", "0")
    assert "[postgres,ops]" in dockerfile and "COPY model " in dockerfile
    ignored = set((ROOT / ".dockerignore").read_text().split())
    assert {".git", ".venv", ".env", "var"} <= ignored
    assert "model" not in ignored and "model/shipped" not in ignored
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert any(dep.startswith("flower") for dep in project["optional-dependencies"]["ops"])
    assert (ROOT / "model" / "shipped" / "cnn.keras").is_file()
