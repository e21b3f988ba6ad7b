"""MkDocs hook: generate the command-line reference (``cli.md``) from the CLI itself.

The page is built at documentation build time from :func:`gossipfl.cli.build_parser`, the
parser ``gossipfl`` runs, so a new subcommand or flag appears in the docs the moment it
exists and a removed one disappears: the reference cannot go stale. Nothing is written to
``docs/``; the page exists only in the build.

``render_cli_reference(parser)`` is plain Python (no MkDocs needed), which is what
``tests/test_docs_site.py`` uses to check that every subcommand and flag is listed.
"""

from __future__ import annotations

import argparse
import functools
import re
from collections.abc import Iterator
from typing import Any

PAGE = "cli.md"
WIDTH = 88
"""Column width of the usage blocks: fixed, so the page does not depend on the terminal
that built it."""

INTRO = """\
# Command line

Generated from the `gossipfl` command's own argument parser when this site was built, so
it matches the installed version exactly. Every command also takes `-h`/`--help`, which
prints the same text in a terminal.

Exit statuses: 0 done; 1 the command ran but some of its work failed (`experiment run`
with failed runs); 2 a mistake in what was typed or configured, said in one line,
`gossipfl COMMAND: error: what happened; what to do` (with a "did you mean" where one
fits); 70 an internal error, a bug in gossipfl (its traceback is printed, please report
it); 130 interrupted by Ctrl+C; 143 stopped by SIGTERM (`experiment run`).

| command | what it does |
|---|---|
"""


def walk(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ("gossipfl",)
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str]]:
    """Every parser of the CLI, depth first: (command words, parser, one-line help)."""
    yield path, parser, ""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {choice.dest: choice.help or "" for choice in action._choices_actions}
            for name, sub in action.choices.items():
                for sub_path, sub_parser, sub_help in walk(sub, (*path, name)):
                    yield sub_path, sub_parser, sub_help or helps.get(name, "")


def render_cli_reference(parser: argparse.ArgumentParser) -> str:
    """The whole reference page as Markdown."""
    commands = list(walk(parser))
    rows = [
        f"| [`{' '.join(path)}`](#{anchor(path)}) | {escape(helptext)} |"
        for path, _, helptext in commands[1:]
    ]
    sections = [render_command(path, sub, helptext) for path, sub, helptext in commands]
    return INTRO + "\n".join(rows) + "\n\n" + "\n\n".join(sections) + "\n"


def anchor(path: tuple[str, ...]) -> str:
    """The id MkDocs' toc extension gives the heading ``## `gossipfl a b```."""
    return "-".join(path)


def render_command(path: tuple[str, ...], parser: argparse.ArgumentParser, helptext: str) -> str:
    fixed_width(parser)
    out = [f"## `{' '.join(path)}`"]
    description = parser.description or sentence(helptext)
    if description:
        out.append(paragraphs(description))
    out.append("```text\n" + parser.format_usage().strip() + "\n```")
    table = argument_table(parser)
    if table:
        out.append(table)
    if parser.epilog:
        out.append("```text\n" + parser.epilog.strip() + "\n```")
    return "\n\n".join(out)


def sentence(text: str) -> str:
    """A subcommand's one-line help as a sentence, for commands without a description."""
    text = text.strip()
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".") if text else ""


def fixed_width(parser: argparse.ArgumentParser) -> None:
    """Make the parser format its usage at WIDTH columns, whatever the terminal."""
    formatter_class: Any = parser.formatter_class
    parser.formatter_class = functools.partial(formatter_class, width=WIDTH)


def argument_table(parser: argparse.ArgumentParser) -> str:
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction):
            continue  # every command has -h/--help; the intro says so once
        if isinstance(action, argparse._SubParsersAction):
            names = ", ".join(f"`{name}`" for name in action.choices)
            rows.append(f"| `{action.metavar or action.dest}` | one of {names} (see below) |")
            continue
        rows.append(f"| {argument_names(action)} | {argument_help(action)} |")
    if not rows:
        return ""
    return "| argument | meaning |\n|---|---|\n" + "\n".join(rows)


def argument_names(action: argparse.Action) -> str:
    """``--peers N``, ``-v, --verbose``, or the positional's metavar."""
    if not action.option_strings:
        return f"`{metavar(action)}`"
    takes_value = action.nargs != 0
    value = f" {metavar(action)}" if takes_value else ""
    return ", ".join(f"`{option}{value}`" for option in action.option_strings)


def metavar(action: argparse.Action) -> str:
    if isinstance(action.metavar, str):
        return action.metavar
    if isinstance(action.metavar, tuple):
        return " ".join(action.metavar)
    if action.choices is not None and not action.option_strings:
        return "{" + ",".join(map(str, action.choices)) + "}"
    return action.dest.upper() if action.option_strings else action.dest


def argument_help(action: argparse.Action) -> str:
    parts = [escape(expand(action))] if action.help else []
    if action.choices is not None and not isinstance(action.choices, dict):
        parts.append("choices: " + ", ".join(f"`{c}`" for c in action.choices))
    if isinstance(action, argparse._AppendAction | argparse._CountAction) and (
        action.help and "repeatable" not in action.help
    ):
        parts.append("repeatable")
    shown_default = action.default not in (None, False, [], argparse.SUPPRESS)
    if shown_default and action.help and "default" not in action.help:
        parts.append(f"default: `{action.default}`")
    return "; ".join(parts) if parts else "—"


def expand(action: argparse.Action) -> str:
    """The help text with argparse's ``%(default)s``-style placeholders filled in."""
    assert action.help is not None
    if "%" not in action.help:
        return action.help
    values = dict(vars(action), prog="gossipfl")
    for name in list(values):
        if hasattr(values[name], "__name__"):
            values[name] = values[name].__name__
    if values.get("choices") is not None:
        values["choices"] = ", ".join(map(str, values["choices"]))
    return action.help % values


CODE_SPAN = re.compile(r"(`+)(.+?)\1")
SPECIAL = re.compile(r"([\\*_\[\]|>])")


def escape(text: str) -> str:
    """Escape Markdown outside code spans, so help text shows as written (``<id>``,
    ``rule.KEY=VALUE`` and ``x|y`` included) and table cells stay one cell."""
    out, last = [], 0
    for match in CODE_SPAN.finditer(text):
        out.append(escape_plain(text[last : match.start()]))
        out.append(match.group(0).replace("|", "\\|"))
        last = match.end()
    out.append(escape_plain(text[last:]))
    return " ".join("".join(out).split())


def escape_plain(text: str) -> str:
    # Python-Markdown has no backslash escape for "<"; an entity works everywhere.
    return SPECIAL.sub(r"\\\1", text.replace("&", "&amp;")).replace("<", "&lt;")


def paragraphs(text: str) -> str:
    """Descriptions keep their paragraph breaks; lines within a paragraph are joined."""
    blocks = re.split(r"\n\s*\n", text.strip())
    return "\n\n".join(escape(block) for block in blocks)


# ----------------------------------------------------------------------- MkDocs events


def on_files(files: Any, config: Any) -> Any:
    """Add the generated ``cli.md`` to the build (the nav refers to it)."""
    from mkdocs.structure.files import File

    from gossipfl.cli import build_parser

    files.append(File.generated(config, PAGE, content=render_cli_reference(build_parser())))
    return files
