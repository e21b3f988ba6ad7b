"""Every shell command shown in README.md and docs/ runs, and prints what the page shows.

The convention (summed up for readers in docs/index.md, "Commands in these pages"):

* A fenced block marked ``console`` holds commands and their output: a line starting with
  a prompt (``$ ``, or ``host-1$ `` for a named host) is a command, a line ending in ``\\``
  continues it, a line starting with ``#`` is a comment, and every other line is output
  the command before it prints. A block marked ``sh`` (or ``bash``, ``shell``) holds only
  commands, one a line. Everything else (``text``, unmarked blocks) is never run.
* Every command of such a block is run by this test, page by page in document order, in a
  fresh directory laid out like a checkout (``experiments/``, ``examples/``, ``Makefile``,
  ``.venv``), with ``HOME`` in that directory too. It must exit with status 0.
* Every output line shown must match a line the command printed (stdout or stderr), with
  ``...`` matching anything, and numbers, peer IDs and ports matching any value. A peer ID
  or port shown in the output is learned: later commands on the page that use the shown
  value get the real one (so the quickstart's second peer joins the first one's real
  address).
* ``gossipfl start`` and the embedding examples are daemons: each runs in the
  background; the next command starts once the daemon has printed the lines the page
  shows for it, and every daemon must have exited with status 0 by the end of the page.
* A block preceded by ``<!-- not run: REASON -->`` is not run (a command needs several
  hosts, root, or hours); its ``gossipfl`` commands are still parsed (in
  tests/test_docs_site.py) and every repository path it names must exist. Keep such
  markers rare: NOT_RUN_BUDGET bounds them.

What the test substitutes, so that each page runs in seconds rather than hours, is listed in
``Workspace.substitute`` and ``Workspace.__init__``: 2 rounds instead of the page's count,
experiment files with ``rounds = 2`` and one seed, free ports for fixed ones, the
directory for ``/tmp/`` and ``/srv/`` paths, fresh peer IDs for placeholders such as
``12D3KooW...``, ``make -n`` for ``make`` (the target must exist; running ``make test``
inside the test suite would recurse), ``--quick`` for the consensus-rate study, stand-in
files for the names the pages make up (``my.toml``, ``my-network.graphml``), and a minimal
``jq`` where none is installed.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from gossipfl.identity import generate_identity
from gossipfl.simulation import SimulationConfig
from gossipfl.simulation.processes import free_ports

pytestmark = [pytest.mark.network, pytest.mark.timeout(240)]

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]

SHELL_BLOCKS = {"console", "sh", "bash", "shell"}
FENCE = re.compile(
    r"^(?P<indent>[ \t]*)```(?P<lang>[\w-]*)[^\n]*\n(?P<body>.*?)^(?P=indent)```[ \t]*$",
    re.MULTILINE | re.DOTALL,
)
NOT_RUN = re.compile(r"<!--\s*not run:\s*(?P<reason>.+?)\s*-->\s*\Z", re.DOTALL)
PROMPT = re.compile(r"^[\w.@-]*\$ ")
"""``$ `` or ``host-1$ `` before a command in a console block."""
NOT_RUN_BUDGET = 10
"""At most this many blocks in all the docs may be marked not run (today's count: adding
one means deciding that it really cannot run here)."""
PARALLEL_PAGES = 2
"""Pages run two at a time, each in its own workspace: much of a page's time is process
start-up and peers waiting for each other, and CI has two cores."""

ROUNDS = 2
"""Rounds every training command runs here, whatever the page says."""
COMMAND_TIMEOUT_S = 120.0
"""Bound on one foreground command (the slowest takes ~8 s; this only guards a hang)."""
DAEMON_TIMEOUT_S = 90.0
"""Bound on a daemon printing its lines, and on every daemon exiting at the page's end."""

ROUND_COMMANDS = re.compile(r"^(?:gossipfl (?:simulate|start)|python examples/embed_\w+\.py)\b")
"""Commands that train for ``--rounds N`` rounds."""
DAEMONS = re.compile(r"^(?:gossipfl start|python examples/embed_\w+\.py)\b")
"""Commands that run until their job is done, usually waiting for other peers."""
OUTPUT_ONLY_FLAGS = {"--json", "--no-plot"}
"""``gossipfl simulate`` with nothing but these is the showcase: run as it is (~4 s)."""

PEER_ID = re.compile(r"12D3KooW[1-9A-HJ-NP-Za-km-z]*(?:\.\.\.)?")
"""A peer ID as the pages show it: complete, shortened (``12D3KooWJeW1...``), or a bare
placeholder (``12D3KooW...``)."""
PORT = re.compile(r"(?<=/tcp/)(\d+)")
REPO_PATH = re.compile(r"^(?:experiments|examples|topologies|docs|tests|gossipfl)/\S+$")


# ------------------------------------------------------------------------ the pages


@dataclass
class Command:
    page: str
    line: int
    text: str
    """As on the page, continuation lines included."""
    output: list[str] = field(default_factory=list)
    """The output lines the page shows after it (console blocks)."""
    not_run: str | None = None
    """The reason given by a ``<!-- not run: ... -->`` marker before its block."""

    @property
    def where(self) -> str:
        return f"{self.page}:{self.line}"

    @property
    def one_line(self) -> str:
        return " ".join(self.text.replace("\\\n", " ").split())


@dataclass
class Block:
    page: str
    line: int
    language: str
    commands: list[Command]
    not_run: str | None


def shell_blocks(path: Path) -> Iterator[Block]:
    text = path.read_text(encoding="utf-8")
    page = str(path.relative_to(ROOT))
    for match in FENCE.finditer(text):
        language = match.group("lang")
        if language not in SHELL_BLOCKS:
            continue
        first = text.count("\n", 0, match.start("body")) + 1
        marker = NOT_RUN.search(text[: match.start()])
        reason = " ".join(marker.group("reason").split()) if marker else None
        body = match.group("body")
        if match.group("indent"):
            body = "\n".join(line.removeprefix(match.group("indent")) for line in body.split("\n"))
        commands = list(parse_block(page, first, language, body))
        for command in commands:
            command.not_run = reason
        yield Block(page, first, language, commands, reason)


def parse_block(page: str, first: int, language: str, body: str) -> Iterator[Command]:
    current: Command | None = None
    continues = False
    for number, line in enumerate(body.splitlines(), start=first):
        if continues and current is not None:
            current.text += "\n" + line
        elif language == "console" and PROMPT.match(line):
            if current is not None:
                yield current
            current = Command(page, number, PROMPT.sub("", line, count=1))
        elif not line.strip() or line.lstrip().startswith("#"):
            pass
        elif language == "console":
            assert current is not None, f"{page}:{number}: output before any command: {line!r}"
            current.output.append(line)
        else:
            if current is not None:
                yield current
            current = Command(page, number, line.strip())
        continues = line.rstrip().endswith("\\")
    if current is not None:
        yield current


def all_blocks() -> list[Block]:
    return [block for path in PAGES for block in shell_blocks(path)]


# ---------------------------------------------------------------- output matching


@dataclass
class OutputPattern:
    """One output line of a page as a regular expression."""

    line: str
    regex: re.Pattern[str]
    tokens: list[str]
    """The page's peer IDs and ports, in the order of the regex's groups."""

    @classmethod
    def from_line(cls, line: str) -> OutputPattern:
        parts: list[str] = []
        tokens: list[str] = []
        special = re.compile(
            rf"(?P<id>{PEER_ID.pattern})|/tcp/(?P<port>\d+)|(?P<dots>\.\.\.)"
            r"|(?P<number>\d+(?:\.\d+)?)|(?P<space>\s+)"
        )
        last = 0
        for match in special.finditer(line.strip()):
            parts.append(re.escape(line.strip()[last : match.start()]))
            last = match.end()
            if match.group("id"):
                tokens.append(match.group("id"))
                parts.append(r"(12D3KooW[1-9A-HJ-NP-Za-km-z]+)")
            elif match.group("port"):
                tokens.append(match.group("port"))
                parts.append(r"/tcp/(\d+)")
            elif match.group("dots"):
                parts.append(r".*?")
            elif match.group("number"):
                parts.append(r"\d+(?:\.\d+)?")
            else:
                parts.append(r"\s+")
        parts.append(re.escape(line.strip()[last:]))
        return cls(line, re.compile("".join(parts)), tokens)

    def find(self, printed: list[str]) -> dict[str, str] | None:
        """The page's tokens mapped to the values of the first matching printed line."""
        for line in printed:
            match = self.regex.fullmatch(line.strip())
            if match:
                return dict(zip(self.tokens, match.groups(), strict=True))
        return None


def shown_lines(command: Command) -> list[str]:
    return [line for line in command.output if line.strip() not in ("", "...")]


# -------------------------------------------------------------------- the workspace


class Workspace:
    """A directory laid out like a checkout, where one page's commands run in order."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.home = path / "home"
        self.home.mkdir()
        bindir = Path(sys.executable).parent
        for name in ("examples", "topologies", "Makefile", "pyproject.toml", "constraints.txt"):
            (path / name).symlink_to(ROOT / name)
        (path / ".venv").symlink_to(Path(sys.prefix))
        shutil.copytree(ROOT / "experiments", path / "experiments")
        for toml in (path / "experiments").rglob("*.toml"):
            toml.write_text(shortened_experiment(toml.read_text(encoding="utf-8")))
        # Stand-ins for the files the pages make up: a config with every default, a graph.
        (path / "my.toml").write_text(SimulationConfig().to_toml(), encoding="utf-8")
        shutil.copy(ROOT / "topologies/karate-club.graphml", path / "my-network.graphml")
        tools = path / ".tools"
        tools.mkdir()
        if shutil.which("jq") is None:  # the pages pipe JSON into jq; CI may not have it
            (tools / "jq").write_text(JQ_STAND_IN.format(python=sys.executable))
            (tools / "jq").chmod(0o755)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GOSSIPFL_")}
        self.env.update(
            HOME=str(self.home),
            PATH=os.pathsep.join([str(bindir), str(tools), self.env.get("PATH", "")]),
            PYTHONUNBUFFERED="1",
            MPLBACKEND="Agg",
            OMP_NUM_THREADS="1",
        )
        self.learned: dict[str, str] = {}
        """A peer ID or port as the page shows it -> the real one of this run."""
        self.daemons: list[tuple[Command, subprocess.Popen[bytes], Path]] = []

    # --- substitutions

    def substitute(self, command: str) -> str:
        command = self.paths(command)
        command = PEER_ID.sub(lambda m: self.peer_id(m.group(0)), command)
        command = PORT.sub(lambda m: self.port(m.group(0)), command)
        command = fewer_rounds(command)
        command = re.sub(r"^make ", "make -n ", command)  # the target exists; no recursion
        return re.sub(
            r"(experiments/topologies/consensus_rates\.py)(?=\s|$)", r"\1 --quick", command
        )

    def paths(self, text: str) -> str:
        text = re.sub(r"(?<![\w./~-])/(tmp|srv)/", lambda m: f"{self.path}/{m.group(1)}/", text)
        return re.sub(r"(?<![\w./-])/home/ana(?=/|\b)", str(self.home), text)

    def peer_id(self, shown: str) -> str:
        if shown in self.learned:
            return self.learned[shown]
        if shown.endswith("...") and len(shown) > len("12D3KooW..."):
            prefix = shown.removesuffix("...")
            for key, value in self.learned.items():
                if key.startswith(prefix) and not key.endswith("..."):
                    return value
        self.learned[shown] = generate_identity().peer_id  # a placeholder: any valid ID
        return self.learned[shown]

    def port(self, shown: str) -> str:
        if shown == "0":
            return shown
        if shown not in self.learned:
            self.learned[shown] = str(free_ports(1)[0])
        return self.learned[shown]

    # --- running

    def run(self, command: Command) -> None:
        argv = ["bash", "-o", "pipefail", "-c", self.substitute(command.text)]
        if DAEMONS.match(command.text):
            self.start_daemon(command, argv)
            return
        # A session of its own, so that a hung command goes with everything it started.
        process = subprocess.Popen(
            argv,
            cwd=self.path,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            out, _ = process.communicate(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            out, _ = process.communicate()
            pytest.fail(
                f"{command.where}: still running after {COMMAND_TIMEOUT_S:g} s: {argv[-1]}"
                f"\n{tail(out.decode(errors='replace'))}"
            )
        printed = out.decode(errors="replace")
        if process.returncode != 0:
            pytest.fail(
                f"{command.where}: `{command.one_line}` exited with status {process.returncode}"
                f"\n(ran as: {argv[-1]})\n{tail(printed)}"
            )
        missing = self.check_output(command, printed)
        if missing:
            pytest.fail(
                f"{command.where}: `{command.one_line}` did not print what the page shows:\n"
                + "\n".join(missing)
                + f"\n--- it printed:\n{tail(printed)}"
            )

    def start_daemon(self, command: Command, argv: list[str]) -> None:
        log = self.path / f".daemon-{len(self.daemons)}.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(
                [*argv[:-1], "exec " + argv[-1]],
                cwd=self.path,
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.daemons.append((command, process, log))
        deadline = time.monotonic() + DAEMON_TIMEOUT_S
        while True:
            printed = log.read_text(encoding="utf-8", errors="replace")
            missing = self.check_output(command, printed)
            if not missing:
                return
            if process.poll() is not None or time.monotonic() > deadline:
                state = (
                    f"exited with status {process.returncode}"
                    if process.returncode is not None
                    else f"still running after {DAEMON_TIMEOUT_S:g} s"
                )
                pytest.fail(
                    f"{command.where}: `{command.one_line}` {state} without printing what "
                    "the page shows:\n"
                    + "\n".join(missing)
                    + f"\n(ran as: {argv[-1]})\n--- it printed:\n{tail(printed)}"
                )
            time.sleep(0.1)

    def check_output(self, command: Command, printed: str) -> list[str]:
        """The page's output lines that ``printed`` lacks; learn the tokens of the rest."""
        lines = printed.splitlines()
        missing = []
        for shown in shown_lines(command):
            found = OutputPattern.from_line(self.paths(shown)).find(lines)
            if found is None:
                missing.append(f"    {shown.strip()}")
            else:
                self.learned.update(found)
        return missing

    def finish(self) -> None:
        """Every daemon must end on its own, with status 0."""
        deadline = time.monotonic() + DAEMON_TIMEOUT_S
        for command, process, log in self.daemons:
            try:
                process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                printed = log.read_text(encoding="utf-8", errors="replace")
                pytest.fail(
                    f"{command.where}: `{command.one_line}` was still running "
                    f"{DAEMON_TIMEOUT_S:g} s after the page's last command:\n{tail(printed)}"
                )
            if process.returncode != 0:
                printed = log.read_text(encoding="utf-8", errors="replace")
                pytest.fail(
                    f"{command.where}: `{command.one_line}` exited with status "
                    f"{process.returncode}:\n{tail(printed)}"
                )

    def stop(self) -> None:
        """Kill what is left of our own daemons (after a failure)."""
        for _, process, _ in self.daemons:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


JQ_STAND_IN = """#!{python}
# jq FILTER, for the filters the pages use (.key, .key.key): reads one JSON value.
import json, sys
value = json.load(sys.stdin)
for key in sys.argv[1].strip(".").split("."):
    value = value[key] if key else value
print(json.dumps(value))
"""


def fewer_rounds(command: str) -> str:
    """``--rounds ROUNDS`` for every command that trains, except the showcase."""
    head = ROUND_COMMANDS.match(command)
    if head is None:
        return command
    args = shlex.split(command.replace("\\\n", " ").split("|", 1)[0], comments=True)[2:]
    if {"-h", "--help"} & set(args):
        return command
    if command.startswith("gossipfl simulate") and set(args) <= OUTPUT_ONLY_FLAGS:
        return command
    if re.search(r"--rounds[ =]\d+", command):
        return re.sub(r"--rounds[ =]\d+", f"--rounds {ROUNDS}", command)
    return f"{command[: head.end()]} --rounds {ROUNDS}{command[head.end() :]}"


def shortened_experiment(text: str) -> str:
    """An experiment file with ``rounds = ROUNDS`` and only its first seed."""
    text = re.sub(r"^rounds = \d+", f"rounds = {ROUNDS}", text, flags=re.MULTILINE)
    return re.sub(r"^seed = \[([^],]+),[^]]*\]", r"seed = [\1]", text, flags=re.MULTILINE)


def tail(text: str, lines: int = 40) -> str:
    return "\n".join(text.splitlines()[-lines:])


# --------------------------------------------------------------------------- tests


RUN_PAGES = [path for path in PAGES if any(not block.not_run for block in shell_blocks(path))]
PAGE_TEST = "test_every_command_on_the_page_runs"


def run_page(path: Path, directory: Path) -> None:
    """Run every command of a page in order, in a fresh workspace (see the module doc)."""
    space = Workspace(directory)
    try:
        for block in shell_blocks(path):
            if not block.not_run:
                for command in block.commands:
                    space.run(command)
        space.finish()
    finally:
        space.stop()


def runnable(path: Path) -> int:
    return sum(len(b.commands) for b in shell_blocks(path) if not b.not_run)


@pytest.fixture(scope="module")
def page_runs(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[Path, Future[None]]]:
    """Every selected page, run PARALLEL_PAGES at a time, longest first; a page's test
    waits for its own run."""
    selected: set[Path] = set()
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.originalname == PAGE_TEST:
            path = item.callspec.params["path"]
            assert isinstance(path, Path)
            selected.add(path)
    pool = ThreadPoolExecutor(PARALLEL_PAGES, thread_name_prefix="docs-page")
    futures = {
        path: pool.submit(run_page, path, tmp_path_factory.mktemp(path.stem))
        for path in sorted(selected, key=runnable, reverse=True)
    }
    try:
        yield futures
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@pytest.mark.parametrize("path", RUN_PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_command_on_the_page_runs(path: Path, page_runs: dict[Path, Future[None]]) -> None:
    page_runs[path].result()


def test_commands_not_run_are_few_justified_and_name_real_files() -> None:
    marked = [block for block in all_blocks() if block.not_run]
    assert len(marked) <= NOT_RUN_BUDGET, [f"{b.page}:{b.line}" for b in marked]
    missing = []
    for block in marked:
        reason = block.not_run or ""
        assert len(reason.split()) >= 3, f"{block.page}:{block.line}: say why it is not run"
        for command in block.commands:
            words = shlex.split(command.one_line, comments=True)
            missing += [
                f"{command.where}: {word}"
                for word in words
                if REPO_PATH.match(word) and not (ROOT / word).exists()
            ]
    assert not missing, f"not-run commands name files that do not exist: {missing}"


def test_the_convention_finds_the_commands() -> None:
    """A guard against a parser that silently finds nothing, and against console blocks
    that are really output (those should be ``text``)."""
    blocks = all_blocks()
    commands = [command for block in blocks if not block.not_run for command in block.commands]
    assert len(commands) >= 40
    assert any(DAEMONS.match(command.text) for command in commands)
    empty = [f"{b.page}:{b.line}" for b in blocks if not b.commands]
    assert not empty, f"shell blocks without a command (mark output as ```text): {empty}"


def test_output_patterns() -> None:
    pattern = OutputPattern.from_line(
        "listening: /ip4/127.0.0.1/tcp/37699/p2p/12D3KooWJeW1VR1izJDKHizTgGvaXVVSCMNUJsn"
    )
    found = pattern.find(
        ["peer id: x", "listening: /ip4/127.0.0.1/tcp/4001/p2p/12D3KooWAbc", "more"]
    )
    assert found == {"37699": "4001", "12D3KooWJeW1VR1izJDKHizTgGvaXVVSCMNUJsn": "12D3KooWAbc"}
    rounds = OutputPattern.from_line("round 10/100  acc  88.6%  loss ...  in 1/1  members 2")
    assert rounds.find(["round 2/2  acc  77.2%  loss 1.941  in 1/1  members 2"]) == {}
    assert rounds.find(["round 2/2  loss 1.941  in 1/1  members 2"]) is None
    assert fewer_rounds("gossipfl simulate --json | jq .x") == "gossipfl simulate --json | jq .x"
    assert fewer_rounds("gossipfl simulate --peers 9") == "gossipfl simulate --rounds 2 --peers 9"
    assert fewer_rounds("gossipfl start --rounds=20 -q") == "gossipfl start --rounds 2 -q"
