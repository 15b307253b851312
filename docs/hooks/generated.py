"""The parts of the docs that the code already knows, generated from the code and written into the pages.

A generated block sits between two comment lines in the Markdown itself, so it reads on GitHub and
in an editor as well as on the site::

    <!-- generated: NAME (scripts/docs-generate writes this block; ...) -->

    ...the generated Markdown...

    <!-- end generated: NAME -->

The settings table comes from ``server.config``, the API reference from the OpenAPI document the
server serves (``server.calculator.openapi``), the home page's list of pages from the nav in
mkdocs.yml. ``scripts/docs-generate`` rewrites every block from the code (``--check`` only reports
stale ones); tests/test_docs.py fails while a block differs from what the code gives, so a setting
someone adds to ``OPTIONS`` cannot go undocumented.

As an MkDocs hook this module checks that every block is well formed and known (an unknown or
unclosed block stops the build), and publishes the latest benchmark tables (``results/latest.md``
and the chart it shows), which live where the benchmark writes them, outside ``docs/``, under
``results/`` on the site. Run as a script it needs only the standard library and PyYAML.

It also serves Mermaid from the site itself, so diagrams draw offline and no page loads a script
from a CDN: the build takes the ``mermaid`` package of the pinned version from the npm registry with
``npm pack`` (npm checks the registry's checksum; we check it against the one pinned here too),
keeps ``dist/mermaid.min.js`` and the package's licence in a cache outside the repository, and
publishes them as ``assets/mermaid/``. The Material theme uses a ``mermaid`` that a page already
loaded (``extra_javascript`` in mkdocs.yml) instead of fetching its own. Third-party minified code is
never committed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the hook runs from mkdocs, which does not put the repository on sys.path
    sys.path.insert(0, str(ROOT))

from server import config  # noqa: E402
from server.calculator import openapi  # noqa: E402

try:  # as a hook; the script needs no MkDocs
    from mkdocs.exceptions import PluginError
    from mkdocs.structure.files import File, Files
except ImportError:  # pragma: no cover - the script without MkDocs
    class PluginError(Exception):  # type: ignore[no-redef]
        """Stands in for MkDocs' error when run as a script."""

BLOCK = re.compile(r"^<!-- generated: (?P<name>[a-z-]+)(?P<note> \(.*?\))? -->\n(?P<body>.*?)"
                   r"^<!-- end generated: (?P=name) -->$", re.MULTILINE | re.DOTALL)
OPENING = re.compile(r"^<!-- (end )?generated: ([a-z-]+)", re.MULTILINE)
NOTE = " (scripts/docs-generate writes this block; edit the code, not the block)"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
METHODS = ("get", "head", "post", "put", "patch", "delete")


def _cell(text: str) -> str:
    """Table-cell safe: one line, pipes escaped."""
    return " ".join(str(text).split()).replace("|", "\\|")


def settings_table() -> str:
    return config.markdown_table()


def _operations(doc: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(method.upper(), path, op) for path, item in doc["paths"].items()
            for method, op in item.items() if method in METHODS]


def endpoints() -> str:
    """One row per operation: what it does, what it answers with, which statuses it can return."""
    doc = openapi.document()
    rows = ["| method and path | what it does | success | other statuses |", "| --- | --- | --- | --- |"]
    for method, path, op in _operations(doc):
        ok = op["responses"].get("200", {})
        media = ", ".join(f"`{m}`" for m in ok.get("content", {}))
        others = ", ".join(s for s in op["responses"] if s != "200")
        what = op["summary"] + (f". {op['description']}" if op.get("description") else "")
        rows.append(f"| `{method} {path}` | {_cell(what)} | 200 {media} | {others} |")
    return "\n".join(rows)


def problem_types() -> str:
    """Every problem type with its status, meaning and the operations that can answer with it."""
    doc = openapi.document()
    seen: dict[str, dict[str, Any]] = {}
    for method, path, op in _operations(doc):
        for status, response in op["responses"].items():
            for content in response.get("content", {}).values():
                for example in content.get("examples", {}).values():
                    value = example["value"]
                    entry = seen.setdefault(value["type"], {"status": status, "title": value["title"],
                                                            "detail": value["detail"], "where": []})
                    entry["where"].append(f"`{method} {path}`")
    # Types no operation lists (internal-error) still belong in the table; the schema's enum has them all.
    all_types = doc["components"]["schemas"]["Problem"]["properties"]["type"]["enum"]
    rows = ["| `type` | status | title | meaning | returned by |", "| --- | --- | --- | --- | --- |"]
    description = doc["info"]["description"]
    for uri in all_types:
        entry = seen.get(uri)
        if entry is None:  # only in the catalogue table of info.description: take status and title from there
            match = re.search(rf"^\| `{re.escape(uri)}` \| (\d+) \| (.+?) \|$", description, re.MULTILINE)
            if match is None:
                raise PluginError(f"problem type {uri} is in the schema but nowhere in the OpenAPI document")
            rows.append(f"| `{uri}` | {match[1]} | {_cell(match[2])} | | any request (a bug in the server) |")
            continue
        rows.append(f"| `{uri}` | {entry['status']} | {_cell(entry['title'])} | {_cell(entry['detail'])} | "
                    f"{', '.join(dict.fromkeys(entry['where']))} |")
    return "\n".join(rows)


def _schema_table(schema: dict[str, Any]) -> str:
    required = set(schema.get("required", ()))
    rows = ["| member | type | required | meaning |", "| --- | --- | --- | --- |"]
    for name, prop in schema["properties"].items():
        kind = prop.get("type", "any")
        if "enum" in prop and kind == "string" and len(prop["enum"]) <= 8:
            kind = " \\| ".join(f'`"{v}"`' for v in prop["enum"])
        elif "const" in prop:
            kind = f"`{prop['const']!r}`"
        rows.append(f"| `{name}` | {kind} | {'yes' if name in required else 'no'} | "
                    f"{_cell(prop.get('description', ''))} |")
    return "\n".join(rows)


def schemas() -> str:
    doc = openapi.document()
    parts = []
    for name, schema in doc["components"]["schemas"].items():
        intro = f"\n{schema['description']}\n" if "description" in schema else ""
        closed = "\nNo other members are accepted.\n" if schema.get("additionalProperties") is False else ""
        parts.append(f"### {name}\n{intro}\n{_schema_table(schema)}\n{closed}")
    return "\n".join(parts)


def api_description() -> str:
    """The document's own introduction to numbers (syntax, size bound, exactness, results); its words on
    errors and its problem-type table are left to the page's own Errors section."""
    text = openapi.document()["info"]["description"]
    numbers = re.split(r"\n\*\*(?:Errors|Problem types)\*\*", text)[0].strip()
    return numbers.split("\n\n", 1)[-1]  # without the tagline the page's heading already says


def _nav() -> list[Any]:
    """The nav of mkdocs.yml (its other tags, such as ``!!python/name``, are not needed here)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_multi_constructor("", lambda loader, suffix, node: None)
    nav: list[Any] = yaml.load((ROOT / "mkdocs.yml").read_text(), Loader=Loader)["nav"]
    return nav


def _first_sentence(path: Path) -> str:
    """The page's opening sentence: each page starts by saying what a reader can do with it."""
    paragraph = []
    for line in path.read_text().splitlines()[1:]:
        if line.strip() and not line.startswith(("#", "```", "|", "-", "!")):
            paragraph.append(line.strip())
        elif paragraph:
            break
    text = " ".join(paragraph)
    match = re.match(r"(.+?\.)(\s|$)", text)
    sentence = match[1] if match else text
    if sentence.startswith("Use this page to "):
        sentence = sentence.removeprefix("Use this page to ")
        sentence = sentence[0].upper() + sentence[1:]
    return sentence


def page_list() -> str:
    """Every page in the nav with its opening sentence, so a page added to the nav is listed here too."""
    out: list[str] = []

    def walk(items: list[Any], depth: int) -> None:
        for item in items:
            (title, target), = item.items() if isinstance(item, dict) else ((None, item),)
            if isinstance(target, list):
                out.append(f"\n**{title}**\n")
                walk(target, depth + 1)
            elif target != "index.md":
                source = ROOT / "docs" / target
                about = f": {_first_sentence(source)}" if source.exists() else ""  # results/ pages: the title says it
                out.append(f"- [{title or target}]({target}){about}")

    walk(_nav(), 0)
    return "\n".join(out).strip()


GENERATORS: dict[str, Callable[[], str]] = {
    "page-list": page_list,
    "settings-table": settings_table,
    "api-description": api_description,
    "endpoints": endpoints,
    "problem-types": problem_types,
    "schemas": schemas,
}


def render(text: str, where: str) -> str:
    """The page with every generated block filled from the code; an unknown or unclosed block is an error."""
    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in GENERATORS:
            raise PluginError(f"{where}: unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        return f"<!-- generated: {name}{NOTE} -->\n\n{GENERATORS[name]().strip()}\n\n<!-- end generated: {name} -->"

    openings = OPENING.findall(text)
    closed = BLOCK.findall(text)
    if len(openings) != 2 * len(closed):
        raise PluginError(f"{where}: a generated block without its end line (or the other way round)")
    return BLOCK.sub(replace, text)


def stale(pages: list[Path] = PAGES) -> list[Path]:
    """The pages whose generated blocks differ from what the code gives now."""
    return [page for page in pages if render(page.read_text(), page.name) != page.read_text()]


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    """The blocks are in the page already; a bad block stops the build (staleness is the tests' job)."""
    render(markdown, page.file.src_uri)
    return markdown


# Mermaid from the npm registry: the version the Material theme expects (11), pinned with its checksum.
MERMAID_VERSION = "11.12.0"
MERMAID_INTEGRITY = "sha512-ZudVx73BwrMJfCFmSSJT84y6u5brEoV8DOItdHomNLz32uBjNrelm7mg95X7g+C6UoQH/W6mBLGDEDv73JdxBg=="
MERMAID_FILES = {"mermaid.min.js": "package/dist/mermaid.min.js", "LICENSE.txt": "package/LICENSE"}


def mermaid_cache() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "calc-server-docs" / f"mermaid-{MERMAID_VERSION}"


def mermaid_files() -> dict[str, Path]:
    """The site's copy of Mermaid, taken from the npm registry once and cached: {site name: file}."""
    cache = mermaid_cache()
    wanted = {name: cache / name for name in MERMAID_FILES}
    if all(path.exists() for path in wanted.values()):
        return wanted
    npm = shutil.which("npm")
    if npm is None:
        raise PluginError("the docs serve Mermaid from the site and take it from the npm registry: install npm "
                          "(Node.js), or put mermaid.min.js and LICENSE.txt of mermaid "
                          f"{MERMAID_VERSION} in {cache}")
    with tempfile.TemporaryDirectory() as scratch:
        result = subprocess.run([npm, "pack", f"mermaid@{MERMAID_VERSION}", "--pack-destination", scratch],
                                capture_output=True, text=True, timeout=300, cwd=scratch)
        tarball = Path(scratch) / f"mermaid-{MERMAID_VERSION}.tgz"
        if result.returncode != 0 or not tarball.exists():
            raise PluginError(f"npm pack mermaid@{MERMAID_VERSION} failed: {result.stderr.strip()[-800:]}")
        digest = "sha512-" + base64.b64encode(hashlib.sha512(tarball.read_bytes()).digest()).decode()
        if digest != MERMAID_INTEGRITY:
            raise PluginError(f"mermaid {MERMAID_VERSION} from npm has checksum {digest}, not the pinned one")
        cache.mkdir(parents=True, exist_ok=True)
        with tarfile.open(tarball) as archive:
            for name, member in MERMAID_FILES.items():
                source = archive.extractfile(member)
                if source is None:
                    raise PluginError(f"mermaid {MERMAID_VERSION} from npm has no {member}")
                partial = wanted[name].with_suffix(".part")
                partial.write_bytes(source.read())
                partial.replace(wanted[name])  # whole or not at all: a build never serves half a file
    return wanted


def on_files(files: Files, config: Any, **_: Any) -> Files:
    """Publish results/latest.md and the images it shows, from where the benchmark writes them."""
    results = ROOT / "results"
    latest = results / "latest.md"
    if not latest.exists():
        raise PluginError("results/latest.md is missing; scripts/bench writes it")
    wanted = ["latest.md", *re.findall(r"!\[[^\]]*\]\(([^)\s/]+\.png)\)", latest.read_text())]
    for name in wanted:
        files.append(File(f"results/{name}", src_dir=str(ROOT), dest_dir=config["site_dir"],
                          use_directory_urls=config["use_directory_urls"]))
    for name, path in mermaid_files().items():
        files.append(File.generated(config, f"assets/mermaid/{name}", abs_src_path=str(path)))
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/docs-generate", description=(
        "Write the generated blocks of README.md and docs/*.md (settings table, API reference, page list) "
        "from the code."))
    parser.add_argument("--check", action="store_true", help="only list stale pages; exit 1 if there are any")
    args = parser.parse_args(argv)
    outdated = stale()
    for page in outdated:
        if args.check:
            print(f"{page.relative_to(ROOT)}: generated blocks are stale; run scripts/docs-generate", file=sys.stderr)
        else:
            page.write_text(render(page.read_text(), page.name))
            print(f"wrote {page.relative_to(ROOT)}")
    return 1 if args.check and outdated else 0


if __name__ == "__main__":
    sys.exit(main())
