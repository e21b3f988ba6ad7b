"""Keep the example programs shown in the docs identical to the files in ``examples/``.

The tutorial shows each example program in full, as plain Markdown, so that the page reads
the same on GitHub as on the built site (a build-time include would leave GitHub readers
with an empty block). A fenced block whose info string names a repository file, such as
````python title="examples/embed_trio.py"````, holds that file's text, and this script
rewrites every such block from its file::

    .venv/bin/python docs/hooks/include_examples.py           # rewrite the pages
    .venv/bin/python docs/hooks/include_examples.py --check   # exit 1 if one is stale

``tests/test_docs_site.py`` fails when a block differs from its file, naming this script.
It is plain Python (no MkDocs needed) and not an MkDocs hook: the pages in ``docs/`` are
the source of truth for the site too.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
BLOCK = re.compile(
    r'^(?P<open>```\w+ title="(?P<file>examples/[^"]+)"[^\n]*\n)(?P<body>.*?)^(?P<close>```)$',
    re.MULTILINE | re.DOTALL,
)


def render(text: str, root: Path = ROOT) -> str:
    """``text`` with every titled example block holding its file's current text."""

    def fill(match: re.Match[str]) -> str:
        source = (root / match.group("file")).read_text(encoding="utf-8")
        if not source.endswith("\n"):
            source += "\n"
        return match.group("open") + source + match.group("close")

    return BLOCK.sub(fill, text)


def included_files(text: str) -> list[str]:
    """The files a page shows, in order."""
    return [match.group("file") for match in BLOCK.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if stale")
    args = parser.parse_args(argv)
    stale = []
    for page in sorted(DOCS.glob("*.md")):
        text = page.read_text(encoding="utf-8")
        new = render(text)
        if new == text:
            continue
        stale.append(page.relative_to(ROOT))
        if not args.check:
            page.write_text(new, encoding="utf-8")
    for page in stale:
        print(f"{'stale' if args.check else 'updated'}: {page}")
    return 1 if stale and args.check else 0


if __name__ == "__main__":
    sys.exit(main())
