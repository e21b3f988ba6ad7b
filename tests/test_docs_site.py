"""The documentation site: it builds in strict mode and offline, its CLI reference is the
CLI, every page is in the navigation, and what the pages claim is checked here.

The site is built once per module, with ``mkdocs build --strict`` into a temporary
directory, exactly as ``make docs`` builds it.
"""

from __future__ import annotations

import argparse
import ast
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator
from html import escape as html_escape
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.utils.yaml import get_yaml_loader, yaml_load

from gossipfl.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
GENERATED = {"cli.md"}
"""Pages that exist only in the build (made by docs/hooks/)."""
BUILD_TIMEOUT_S = 120
"""The build takes about 5 s; the bound only guards against a hang."""


def load_hook(name: str = "cli_reference") -> ModuleType:
    """A module of docs/hooks/ (not a package: loaded from its file)."""
    spec = importlib.util.spec_from_file_location(name, DOCS / f"hooks/{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def mkdocs_config() -> dict[str, Any]:
    """mkdocs.yml as MkDocs reads it (its ``!relative`` tag included), unvalidated."""
    with open(ROOT / "mkdocs.yml", encoding="utf-8") as source:
        return yaml_load(source, loader=get_yaml_loader(config=MkDocsConfig()))


def nav_pages(nav: Any) -> Iterator[str]:
    if isinstance(nav, str):
        yield nav
    elif isinstance(nav, list):
        for item in nav:
            yield from nav_pages(item)
    elif isinstance(nav, dict):
        for value in nav.values():
            yield from nav_pages(value)


# --------------------------------------------------------------------------- the build


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT_S,
    )
    assert result.returncode == 0, f"strict build failed:\n{result.stdout}\n{result.stderr}"
    return out


API_OBJECTS = {
    "peer": ["gossipfl.peer.Peer", "gossipfl.peer.BlockingPeer", "gossipfl.peer.PeerConfig",
             "gossipfl.peer.CheckpointStore", "gossipfl.protocol.TopologyNeighbourhood"],
    "topology": ["gossipfl.topology.build_topology", "gossipfl.topology.Topology",
                 "gossipfl.topology.placement_report", "gossipfl.topology.spectral_gap"],
    "merge": ["gossipfl.merge.RULES", "gossipfl.merge.make_rule", "gossipfl.merge.MergeRule",
              "gossipfl.merge.MergeContext"],
    "wire": ["gossipfl.wire.encode", "gossipfl.wire.decode", "gossipfl.wire.Limits",
             "gossipfl.wire.Update", "gossipfl.wire.Hello", "gossipfl.wire.WireError"],
    "simulation": ["gossipfl.simulation.SimulationConfig", "gossipfl.simulation.run_simulation"],
    "experiments": ["gossipfl.experiments.ExperimentSpec",
                    "gossipfl.experiments.run_experiment"],
    "transport": ["gossipfl.transport.base.Transport", "gossipfl.transport.MemoryNetwork",
                  "gossipfl.transport.libp2p.Libp2pTransport"],
}  # fmt: skip
"""What the API reference must document, page by page (from its docstrings)."""


def test_the_strict_build_renders_every_kind_of_page(site: Path) -> None:
    # the generated CLI reference
    assert "gossipfl topology show" in (site / "cli/index.html").read_text()
    # the API reference, rendered from docstrings, Sphinx roles turned into code spans
    for page, objects in API_OBJECTS.items():
        html = (site / f"api/{page}/index.html").read_text()
        missing = [name for name in objects if f'id="{name}"' not in html]
        assert not missing, f"api/{page}.md does not document {missing}"
        assert ":class:`" not in html
        assert ":func:`" not in html
    # the examples, included verbatim in the tutorial
    tutorial = (site / "tutorial/index.html").read_text()
    for example in ("embed_trio.py", "embed_sync.py", "digits_app.py", "peer_args.py"):
        first_line = (ROOT / "examples" / example).read_text().splitlines()[0]
        assert html_escape(first_line.strip('"')) in tutorial, example


def test_the_site_needs_no_network(site: Path) -> None:
    """No page loads fonts, scripts or styles from elsewhere: the site works offline."""
    external = re.compile(r"""<(?:script|link|img)\b[^>]*\b(?:src|href)=["']?(?:https?:)?//""")
    offenders = [
        str(page.relative_to(site))
        for page in site.rglob("*.html")
        if external.search(page.read_text(encoding="utf-8"))
    ]
    assert not offenders, f"pages loading external resources: {offenders}"


# ----------------------------------------------------------------------- the navigation


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    config = mkdocs_config()
    in_nav = list(nav_pages(config["nav"]))
    assert len(in_nav) == len(set(in_nav)), "a page is listed twice in the nav"
    pages = {
        str(path.relative_to(DOCS))
        for path in DOCS.rglob("*.md")
        if path.relative_to(DOCS).parts[0] != "hooks"
    }
    hidden = set(config.get("not_in_nav", "").split())
    assert sorted(pages - set(in_nav) - hidden) == [], "pages missing from the nav"
    assert sorted(set(in_nav) - pages - GENERATED) == [], "nav entries without a page"
    assert not GENERATED & pages, "a generated page must not also exist in docs/"


# --------------------------------------------------------------------- the CLI reference


def every_command(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("gossipfl",)
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser]]:
    """Walked here independently of the hook, so a hook that skips a level fails."""
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from every_command(sub, (*path, name))


def test_the_cli_reference_lists_every_subcommand_and_flag() -> None:
    text = load_hook().render_cli_reference(build_parser())
    commands = list(every_command(build_parser()))
    assert len(commands) >= 9  # gossipfl, simulate, experiment {run, show}, plot, ...
    missing = []
    for path, parser in commands:
        section = f"## `{' '.join(path)}`"
        if section not in text:
            missing.append(section)
            continue
        body = text.split(section, 1)[1].split("\n## ", 1)[0]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            metavar = action.metavar if isinstance(action.metavar, str) else action.dest
            names = action.option_strings or [metavar]
            missing += [f"{' '.join(path)} {n}" for n in names if f"`{n}" not in body]
    assert not missing, f"not in the CLI reference: {missing}"


def test_the_cli_reference_follows_the_parser() -> None:
    """A flag added to the parser appears in the page; nothing is written by hand."""
    parser = argparse.ArgumentParser(prog="gossipfl")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    start = sub.add_parser("start", help="run a peer")
    start.add_argument("--home", metavar="DIR", help="the peer's <home> | directory")
    start.add_argument("--mdns", action="store_true", help="find peers on the LAN")
    start.add_argument("--codec", choices=["fp32", "int8"], default="fp32", help="encoding")
    text = load_hook().render_cli_reference(parser)
    assert "## `gossipfl start`" in text
    assert "| `--home DIR` | the peer's &lt;home\\> \\| directory |" in text
    assert "| `--mdns` | find peers on the LAN |" in text
    assert "choices: `fp32`, `int8`; default: `fp32`" in text
    assert "[`gossipfl start`](#gossipfl-start) | run a peer |" in text


# ------------------------------------------------------- what the pages say is true


def code_blocks(path: Path, languages: set[str]) -> Iterator[str]:
    text = path.read_text(encoding="utf-8")
    for match in re.finditer(r"^```(\w+)[^\n]*\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
        if match.group(1) in languages:
            yield match.group(2)


PROMPT = re.compile(r"^[\w.@-]*\$ ")
"""``$ `` or ``host-1$ `` before a command in a console block."""


def gossipfl_commands(block: str) -> Iterator[str]:
    """`gossipfl ...` command lines of a shell block, continuations joined."""
    for line in block.replace("\\\n", " ").splitlines():
        line = PROMPT.sub("", line.strip())
        if line.startswith("gossipfl "):
            yield line.split("|", 1)[0]


DOC_FILES = [ROOT / "README.md", *sorted(p for p in DOCS.glob("*.md"))]


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_gossipfl_command_in_the_docs_parses(path: Path) -> None:
    """Every command line shown in the docs is accepted by today's CLI."""
    parser = build_parser()
    bad = []
    for block in code_blocks(path, {"sh", "console", "bash", "shell"}):
        for command in gossipfl_commands(block):
            argv = shlex.split(command, comments=True)[1:]
            if "--help" in argv or "-h" in argv:
                continue
            try:
                parser.parse_args(argv)
            except SystemExit:
                bad.append(command)
    assert not bad, f"commands the CLI rejects: {bad}"


@pytest.mark.parametrize("path", DOC_FILES, ids=lambda p: p.name)
def test_every_python_block_in_the_docs_is_valid_python(path: Path) -> None:
    for block in code_blocks(path, {"python"}):
        if block.lstrip().startswith("--8<--"):
            continue  # an included file; tests/test_examples.py runs it
        ast.parse(block)


def test_the_tutorial_shows_the_examples_as_they_are() -> None:
    """The tutorial holds the example programs in full, as plain Markdown (GitHub shows
    nothing of a build-time include); each listing must be its file, byte for byte."""
    hook = load_hook("include_examples")
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    assert hook.included_files(text) == [
        "examples/digits_app.py",
        "examples/embed_trio.py",
        "examples/embed_sync.py",
        "examples/peer_args.py",
    ]
    assert "--8<--" not in text
    stale = [
        page.name for page in DOCS.glob("*.md") if hook.render(page.read_text()) != page.read_text()
    ]
    assert not stale, f"run `python docs/hooks/include_examples.py`: stale listings in {stale}"


def test_every_api_page_says_in_plain_markdown_what_it_documents() -> None:
    """Each docs/api/ page starts with a table of its ::: objects and their source files,
    generated by docs/hooks/api_contents.py and current."""
    hook = load_hook("api_contents")
    package = hook.load_package()
    stale = []
    for page in sorted((DOCS / "api").glob("*.md")):
        text = page.read_text(encoding="utf-8")
        assert hook.BEGIN in text, f"{page.name} has no contents table"
        if hook.render(text, package) != text:
            stale.append(page.name)
    assert not stale, f"run `python docs/hooks/api_contents.py`: stale tables in {stale}"
    peer = (DOCS / "api/peer.md").read_text(encoding="utf-8")
    assert "| `gossipfl.peer.Peer` | class | `gossipfl/peer/runtime.py` |" in peer


def test_the_numbers_on_the_concepts_page() -> None:
    """concepts.md, index.md and README.md quote these; they are recomputed here."""
    from gossipfl.attacks import ATTACKS
    from gossipfl.cli.showcase import showcase_configs
    from gossipfl.merge import RULES
    from gossipfl.simulation.byzantine import place_byzantine
    from gossipfl.simulation.runner import build_topology_for
    from gossipfl.topology import (
        FAMILIES,
        build_topology,
        placement_report,
        ring_graph,
        torus_graph,
    )

    def facts(family: str, peers: int) -> tuple[float, int | None]:
        topology = build_topology(family, peers=peers)
        return round(topology.spectral_gap(), 5), topology.predicted_rounds(1e-6)

    assert facts("ring", 16) == (0.05075, 266)
    assert facts("torus", 16) == (0.4, 28)
    assert facts("complete", 16) == (1.0, 1)
    assert facts("ring", 64) == (0.00321, 4297)
    assert facts("torus", 64) == (0.11716, 111)  # quoted as 0.1172
    assert facts("hypercube", 64)[0] == pytest.approx(0.2857, abs=5e-5)
    assert build_topology("one-peer-exponential", peers=16).predicted_rounds(1e-6) == 4
    exponential = build_topology("exponential", peers=8)  # quickstart: eight hosts
    assert {len(exponential.in_neighbours(i)) for i in range(8)} == {3}
    assert build_topology("torus", peers=16).weights(5) == pytest.approx(
        dict.fromkeys((1, 4, 6, 9), 0.2)
    )

    ring_one = placement_report(ring_graph(n=8), byzantine=[7])
    assert ring_one.undefended == (0, 6)
    ring_two = placement_report(ring_graph(n=8), byzantine=[3, 7])
    assert ring_two.undefended == (0, 2, 4, 6)
    assert ring_two.honest_spectral_gap == 0.0
    torus = placement_report(torus_graph(rows=4, cols=4), byzantine=[5])
    assert torus.undefended == ()

    showcase, _ = showcase_configs(plot=False)
    report = place_byzantine(showcase, build_topology_for(showcase))
    assert report is not None
    assert round(report.report.delta_max, 3) == 0.286
    assert report.report.honest_spectral_gap == pytest.approx(0.4)

    assert (len(RULES), len(ATTACKS), len(FAMILIES)) == (12, 10, 14)
