"""The ``gossipfl`` command line.

Each subcommand lives in its own module under :mod:`gossipfl.cli` and exposes
``register(subparsers)``, which adds its parser and sets ``handler`` to a function
``(argparse.Namespace) -> int``. Heavy imports (torch, libp2p, matplotlib) happen inside
handlers, so ``gossipfl --help`` stays fast.

The error contract. A mistake in what a person typed (a flag, a value, a config file, a
path) ends with exactly **one line on stderr** and **exit status 2**::

    gossipfl simulate: error: unrecognized argument --topolgy; did you mean --topology?
    gossipfl: error: unknown merge rule 'medain'; did you mean 'median'? (choose one of: ...)

The line says what happened, then what to do: a "did you mean", the right form of what
was typed, or the command that fixes it. argparse's usage block is not printed (the line
points to ``--help`` instead), and :class:`~gossipfl.errors.GossipflError` raised
anywhere, even inside trio's exception groups, becomes that one line.

Exit statuses: 0 done; 1 the command ran but some of its work failed (``experiment run``
with failed runs); 2 a mistake in the input; 70 an internal error; 130 interrupted.

An *internal error* is an exception our code did not mean to raise: a bug. It is not
dressed up as a mistake of the user's: its traceback is printed, followed by one line
saying that it is a bug and to report it with the traceback (a bug report needs exactly
that, and hiding it would turn a bug into a mystery). The status, 70, is sysexits'
EX_SOFTWARE, so scripts can tell a bug from a usage error. One exception: an
:class:`OSError` naming a file (a missing directory, a permission, a full disk) is about
the user's filesystem, not our code, so it is reported as a mistake (with its traceback
too under ``-v``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import traceback
from collections.abc import Iterator, Sequence
from typing import NoReturn

from gossipfl import __version__
from gossipfl.errors import GossipflError, did_you_mean, leaf_errors

# Subcommand modules, in the order `gossipfl --help` lists them.
COMMANDS: tuple[str, ...] = (
    "simulate",
    "experiment",
    "plot",
    "topology",
    "task",
    "new",
    "init",
    "start",
)

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERNAL = 70
EXIT_INTERRUPTED = 130

ASSIGNMENT_FLAGS = ("--set", "--param")
"""Flags whose value is one ``KEY=VALUE`` word."""


class UsageError(GossipflError):
    """A command line that cannot be parsed (reported like any other mistake)."""


class CliParser(argparse.ArgumentParser):
    """An :class:`argparse.ArgumentParser` whose errors follow the CLI's contract: one
    line, ``<prog>: error: <what happened>; <what to do>``, exit status 2.

    argparse prints a usage block before its error line; with a dozen options that block
    buries the one line that matters, so it is left out and the line ends with a hint
    (``did you mean``, the missing value's form, or ``see `... --help```). Subparsers are
    of this class too (argparse creates them with the parent's class).
    """

    def error(self, message: str) -> NoReturn:
        self.fail(explain(self, message))

    def fail(self, message: str) -> NoReturn:
        """Print ``message`` as the one error line and exit with status 2."""
        self.exit(EXIT_USAGE, f"{self.prog}: error: {one_line(message)}\n")

    def option_strings(self) -> list[str]:
        """Every long option of this parser (``--topology``, ...)."""
        return [
            option
            for action in self._actions
            for option in action.option_strings
            if option.startswith("--")
        ]

    def action_for(self, option: str) -> argparse.Action | None:
        """The action of ``option`` (e.g. ``--peers``), if this parser has it."""
        return next((a for a in self._actions if option in a.option_strings), None)


# ------------------------------------------------------------------ argparse errors

_INVALID_CHOICE = re.compile(
    r"argument (?P<arg>[^:]+): invalid choice: '(?P<value>.*)' \(choose from (?P<choices>.*)\)"
)
_INVALID_TYPE = re.compile(r"argument (?P<arg>[^:]+): invalid (?P<type>\w+) value: '(?P<value>.*)'")
_NEEDS_VALUE = re.compile(r"argument (?P<arg>[^:]+): expected one argument")
_NO_VALUE = re.compile(r"argument (?P<arg>[^:]+): ignored explicit argument '(?P<value>.*)'")
_UNRECOGNIZED = re.compile(r"unrecognized arguments: (?P<args>.*)")

_TYPE_WORDS = {"int": "a whole number", "float": "a number"}


def _option(arg: str) -> str:
    """The longest spelling of an option argparse names as ``-q/--quiet``."""
    return max(arg.split("/"), key=len)


def explain(parser: CliParser, message: str) -> str:
    """argparse's error ``message``, completed with what to do about it."""
    help_hint = f" (see `{parser.prog} --help`)"
    if match := _INVALID_CHOICE.fullmatch(message):
        choices = re.findall(r"'([^']*)'", match["choices"])
        value = match["value"]
        hint = did_you_mean(value, choices)
        return (
            f"argument {match['arg']}: invalid choice {value!r}{hint} "
            f"(choose from {', '.join(choices)})"
        )
    if match := _INVALID_TYPE.fullmatch(message):
        option, value = _option(match["arg"]), match["value"]
        word = _TYPE_WORDS.get(match["type"], f"a value of type {match['type']}")
        example = "3" if match["type"] == "int" else "0.5"
        return f"{option} got {value!r}: give {word}, e.g. {option} {example}"
    if match := _NEEDS_VALUE.fullmatch(message):
        option = _option(match["arg"])
        return f"{option} needs a value: write {option} {_metavar(parser.action_for(option))}"
    if match := _NO_VALUE.fullmatch(message):
        option = _option(match["arg"])
        return (
            f"{option} is a switch and takes no value (got {match['value']!r}): write just {option}"
        )
    if match := _UNRECOGNIZED.fullmatch(message):
        return unrecognized(parser, match["args"].split())
    return message + help_hint


def _metavar(action: argparse.Action | None) -> str:
    """How ``--help`` names an option's value (``N`` for a count)."""
    if action is None:
        return "VALUE"
    if action.metavar:
        return str(action.metavar)
    if action.type is int:
        return "N"
    return "X" if action.type is float else action.dest.upper()


def unrecognized(parser: CliParser, extras: Sequence[str], *others: CliParser) -> str:
    """The message for arguments no parser took: a suggestion for a misspelt flag (among
    ``parser``'s options and ``others``'), else a pointer to ``--help``."""
    first = extras[0]
    if first.startswith("-"):
        flag = first.split("=", 1)[0]
        counted = "-v" if re.fullmatch(r"-v+", flag) else flag  # -vv is -v twice
        for top in others:
            if top.action_for(counted) is not None and top is not parser:
                command = parser.prog.removeprefix(f"{top.prog} ")
                return (
                    f"unrecognized argument {flag}: it is an option of {top.prog} itself, "
                    f"so it goes before the command: {top.prog} {flag} {command} ..."
                )
        options = parser.option_strings() + [o for p in others for o in p.option_strings()]
        hint = did_you_mean(flag, options, quote=False)
        if hint:
            return f"unrecognized argument {flag}{hint}"
    plural = "s" if len(extras) > 1 else ""
    return f"unrecognized argument{plural} {' '.join(extras)} (see `{parser.prog} --help`)"


def check_assignments(argv: Sequence[str]) -> None:
    """Refuse ``--set key value`` (and ``--param``) with the form that works.

    argparse would take ``key`` as the value and then call ``value`` an unrecognized
    argument, which names the wrong word; this names the right form instead.
    """
    for i, token in enumerate(argv[:-1]):
        if token == "--":
            return
        value = argv[i + 1]
        if token not in ASSIGNMENT_FLAGS or "=" in value or value.startswith("-"):
            continue
        rest = list(argv[i + 2 : i + 4])
        if rest[:1] == ["="]:
            rest = rest[1:]
        following = rest[0] if rest and not rest[0].startswith("-") else "VALUE"
        raise UsageError(
            f"{token} takes key=value as one word, got {value!r}: write {token} {value}={following}"
        )


# ------------------------------------------------------------------ the parser


def build_parser() -> CliParser:
    """The full argument parser; also used to generate the CLI reference."""
    parser = CliParser(
        prog="gossipfl",
        description="Decentralized learning over libp2p: gossip, robust merging, no server.",
    )
    parser.add_argument("--version", action="version", version=f"gossipfl {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output (-v: info, -vv: debug, including libp2p's own logs)",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gossipfl.cli.{name}")
        module.register(subparsers)
    for sub in _subparsers(parser):
        sub.set_defaults(cli_parser=sub)
    return parser


def _subparsers(parser: argparse.ArgumentParser) -> Iterator[CliParser]:
    """Every (sub)command parser below ``parser``, so that an error found after parsing
    can be worded by the command it belongs to."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                if isinstance(sub, CliParser):
                    yield sub
                    yield from _subparsers(sub)


def configure_logging(verbosity: int) -> None:
    """Set up logging for the CLI, deliberately.

    py-libp2p logs on the root logger and emits error-level records during normal DHT
    traffic and shutdown, so its loggers stay at WARNING unless the user asks for -vv.
    """
    level = logging.WARNING if verbosity == 0 else logging.INFO if verbosity == 1 else logging.DEBUG
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if verbosity < 2:
        for noisy in ("libp2p", "multiaddr", "async_service", "zeroconf"):
            logging.getLogger(noisy).setLevel(logging.CRITICAL)


# ------------------------------------------------------------------ running


def one_line(text: str) -> str:
    """``text`` on one line: a message is one line on stderr, whatever it quotes."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _is_user_error(exc: BaseException) -> bool:
    return isinstance(exc, GossipflError) or (isinstance(exc, OSError) and exc.filename is not None)


def _describe(exc: BaseException) -> str:
    """The message of a user-facing error; an OSError gets the file and a hint."""
    if isinstance(exc, OSError) and not isinstance(exc, GossipflError):
        return (
            f"{exc.strerror or exc}: {exc.filename}; check the path, its permissions and the "
            "free space"
        )
    return str(exc)


def report(exc: BaseException, *, verbose: int = 0) -> int:
    """Print what went wrong and return the exit status (see the module docstring)."""
    leaves = list(leaf_errors(exc))
    if any(isinstance(leaf, KeyboardInterrupt) for leaf in leaves):
        print("gossipfl: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if leaves and all(_is_user_error(leaf) for leaf in leaves):
        if verbose:
            traceback.print_exception(exc)
        print(f"gossipfl: error: {one_line(_describe(leaves[0]))}", file=sys.stderr)
        return EXIT_USAGE
    traceback.print_exception(exc)
    print(
        f"gossipfl: internal error: {one_line(f'{type(leaves[0]).__name__}: {leaves[0]}')}. "
        "This is a bug in gossipfl, not a mistake in the command: please report it with "
        "the traceback above (and the output of the same command with -vv)",
        file=sys.stderr,
    )
    return EXIT_INTERNAL


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI and return the process exit status."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        check_assignments(arguments)
    except UsageError as exc:
        return report(exc)
    args, extras = parser.parse_known_args(arguments)
    command: CliParser = getattr(args, "cli_parser", parser)
    if extras:
        command.fail(unrecognized(command, extras, parser))
    configure_logging(args.verbose)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        status: int = handler(args)
    except (SystemExit, GeneratorExit):
        raise
    except BaseException as exc:
        return report(exc, verbose=args.verbose)
    return status
