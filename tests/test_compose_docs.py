"""The console transcripts of docs/deployment.md and docs/load-testing.md, run as written on a real stack.

Each ```console block of those pages that uses Docker Compose is one session: its commands run in
order in one bash process (so ``export`` carries over), from the repository's root, and each
command's standard output must be what the page shows (a line ``...`` stands for any lines). The
only differences from a reader's shell are in the environment, never in the commands:
COMPOSE_PROJECT_NAME (a unique name, so the session cannot touch anyone's stack), the published
ports (free loopback ports; ``localhost:8080`` in a command becomes nginx's), and the images
(the stand-ins scripts/docker-setup builds where the official ones are missing). Whatever
happens, the session's stack is taken down at the end.

(tests/test_docs.py, the docs helper's, runs the transcripts against a bare server on port 8000;
these need the compose stack.)
"""

from __future__ import annotations

import re
import subprocess
import uuid
from pathlib import Path

import pytest
from harness import ROOT
from harness.transcripts import matches  # "..." in a transcript stands for any lines
from test_compose import IMAGES, compose_command, docker_engine, free_port, pick_image

pytestmark = [pytest.mark.docker, pytest.mark.slow]

PAGES = [ROOT / "docs" / "deployment.md", ROOT / "docs" / "load-testing.md"]
MARKER = "@@transcript-command@@"


def sessions() -> list[tuple[str, list[tuple[str, list[str]]]]]:
    """(page name, [(command, expected output lines)]) for each console block that runs docker compose."""
    found = []
    for page in PAGES:
        for block in re.findall(r"```console\n(.*?)```", page.read_text(), re.DOTALL):
            if "docker compose" not in block:
                continue
            commands: list[tuple[str, list[str]]] = []
            continued = False
            for line in block.splitlines():
                if continued:
                    commands[-1] = (commands[-1][0] + "\n" + line, commands[-1][1])
                elif line.startswith("$ "):
                    commands.append((line[2:], []))
                else:
                    commands[-1][1].append(line)
                continued = line.endswith("\\")
            found.append((page.name, commands))
    return found


SESSIONS = sessions()


def test_the_pages_have_compose_transcripts():
    assert {page for page, _ in SESSIONS} == {page.name for page in PAGES}


@pytest.mark.parametrize(("page", "commands"), SESSIONS, ids=[f"{page}-{i}" for i, (page, _) in enumerate(SESSIONS)])
def test_compose_transcript_runs_as_written(page: str, commands: list[tuple[str, list[str]]]):
    docker = docker_engine()
    compose_command(docker)  # Compose v2 is there (skips or fails as the other compose tests do)
    project = f"calcdocs-{uuid.uuid4().hex[:10]}"
    port = free_port()
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "HOME": str(Path.home()),
           "COMPOSE_PROJECT_NAME": project, "COMPOSE_BAKE": "false", "NGINX_PORT": str(port),
           "NGINX_BIND": "127.0.0.1", "LOCUST_PORT": str(free_port()), "PROMETHEUS_PORT": str(free_port())}
    env.update({variable: pick_image(docker, variable) for variable in IMAGES})
    env["LOCUST_IMAGE"] = pick_image(docker, "LOCUST_IMAGE")
    script = "set -u\n" + "".join(f"echo {MARKER}\n{command.replace('localhost:8080', f'localhost:{port}')}\n"
                                  for command, _ in commands)
    try:
        proc = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=900)
    finally:
        subprocess.run(["docker", "compose", "--profile", "*", "down", "-v", "--remove-orphans", "--rmi", "local"],
                       cwd=ROOT, env=env, capture_output=True, timeout=300)
    outputs = proc.stdout.split(MARKER + "\n")[1:]
    assert len(outputs) == len(commands), f"the session stopped early:\n{proc.stdout}\n{proc.stderr[-3000:]}"
    for (command, expected), output in zip(commands, outputs, strict=True):
        assert matches(expected, output.splitlines()), (
            f"{page}: $ {command}\nexpected:\n" + "\n".join(expected) + f"\ngot:\n{output}\n{proc.stderr[-2000:]}")
    leftover = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={project}"],
                              capture_output=True, text=True, timeout=60).stdout.split()
    assert leftover == []
