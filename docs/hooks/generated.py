"""MkDocs hook: the parts of the docs that the code already knows are generated from the code.

A page asks for a generated block with a marker on a line of its own, ``<!-- generated: NAME -->``.
The settings table comes from ``server.config``, the API reference from the OpenAPI document the
server serves (``server.calculator.openapi``), so neither can drift from what runs: a setting someone
adds to ``OPTIONS`` appears in the docs at the next build. An unknown marker stops the build, and so
does a generator that fails.

The latest benchmark tables (``results/latest.md`` and the chart it shows) live where the benchmark
writes them, outside ``docs/``; they are added to the site as they are, under ``results/``.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # the hook runs from mkdocs, which does not put the repository on sys.path
    sys.path.insert(0, str(ROOT))

from server import config  # noqa: E402
from server.calculator import openapi  # noqa: E402

MARKER = re.compile(r"^<!-- generated: ([a-z-]+) -->$", re.MULTILINE)
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


_NAV: list[Any] = []  # the site's nav, kept by on_config for the page list


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

    walk(_NAV, 0)
    return "\n".join(out).strip()


GENERATORS: dict[str, Callable[[], str]] = {
    "page-list": page_list,
    "settings-table": settings_table,
    "api-description": api_description,
    "endpoints": endpoints,
    "problem-types": problem_types,
    "schemas": schemas,
}


def on_config(config: Any, **_: Any) -> Any:
    _NAV[:] = config["nav"] or []
    return config


def on_page_markdown(markdown: str, page: Any, **_: Any) -> str:
    def replace(match: re.Match[str]) -> str:
        name = match[1]
        if name not in GENERATORS:
            raise PluginError(f"{page.file.src_uri}: unknown generated block {name!r}; known: {sorted(GENERATORS)}")
        return GENERATORS[name]()

    return MARKER.sub(replace, markdown)


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
    return files
