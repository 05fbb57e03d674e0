"""Every rctmon command line the README and docs/ show parses against the real CLI.

Docs drift: a renamed option or command leaves a line in a guide that no longer works. Each `rctmon ...` line in a
code block, and each inline code span that is a whole command, is handed to `build_parser().parse_args`.
Placeholders in upper case (FILE, NAME, N, WHEN, ...) and in angle brackets are replaced by a plausible value first;
shell comments, `sudo`, environment assignments and install paths are stripped, continued lines joined. Optional
parts in brackets (`[--since WHEN]`) are checked with them in. An inline mention of a bare command (`rctmon read`)
only has to name a command that exists.
"""

from __future__ import annotations

import glob
import os
import re
import shlex

import pytest

from rctmon.cli import build_parser

from support import REPO

pytestmark = pytest.mark.timeout(30)

_DOCS = [os.path.join(REPO, "README.md"), *sorted(glob.glob(os.path.join(REPO, "docs", "*.md")))]
_FENCE = re.compile(r"^```")
_INLINE = re.compile(r"`((?:sudo\s+)?(?:\S*/)?rctmon\s[^`]*)`")
_PROGRAM = re.compile(r"^(?:sudo\s+(?:-u\s+\S+\s+)?)?(?:[A-Z_]+=\S*\s+)*(?:\S*/)?rctmon(?=\s|$)")
_ANGLED = re.compile(r"<[^>]+>")
_COLUMN_GAP = re.compile(r"\s{3,}")  # code blocks that are tables or diagrams: the next column is no argument
#: What an upper-case placeholder stands for when the line is parsed.
_PLACEHOLDERS = {"FILE": "/etc/rctmon.yml", "NAME": "battery.soc", "N": "1", "S": "1", "WHEN": "2d", "F": "out.txt"}


def _command_lines(path: str) -> list[tuple[int, str]]:
    """Return (line number, command) for every rctmon command shown in a Markdown file."""
    found: list[tuple[int, str]] = []
    in_code = False
    continued = ""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if _FENCE.match(line.strip()):
                in_code = not in_code
                continue
            if in_code:
                text = continued + line.strip()
                if text.endswith("\\"):
                    continued = text[:-1] + " "
                    continue
                continued = ""
                if _PROGRAM.match(text):
                    found.append((number, _COLUMN_GAP.split(text, 1)[0]))
            else:
                found += [(number, span) for span in _INLINE.findall(line)]
    return found


def _argv(command: str) -> list[str] | None:
    """Return the arguments after `rctmon`, placeholders filled in; None for a line that is no invocation."""
    text = command.split(" #", 1)[0].split("|", 1)[0].strip()
    text = _ANGLED.sub("battery.soc", text).replace("[", " ").replace("]", " ").replace("...", " ")
    match = _PROGRAM.match(text)
    if match is None:
        return None
    try:
        words = shlex.split(text[match.end():])
    except ValueError:
        return None
    argv = []
    for word in words:
        if word in ("&&", ";", ">", "2>&1") or word.startswith(">"):
            break
        argv.append(_PLACEHOLDERS.get(word, word))
    return argv or None


def _all_commands() -> list[tuple[str, str]]:
    commands = []
    for path in _DOCS:
        for number, command in _command_lines(path):
            commands.append((f"{os.path.relpath(path, REPO)}:{number}", command))
    return commands


COMMANDS = _all_commands()


def _subcommands() -> set[str]:
    parser = build_parser()
    for action in parser._subparsers._group_actions if parser._subparsers else ():  # noqa: SLF001 - argparse API
        return set(getattr(action, "choices", {}) or {})
    return set()


def test_the_docs_show_commands_at_all() -> None:
    """Guard against the extraction silently finding nothing."""
    assert len(COMMANDS) >= 10
    assert any("daemon" in command for _, command in COMMANDS)


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[where for where, _ in COMMANDS])
def test_a_command_line_in_the_docs_parses(where: str, command: str, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _argv(command)
    if argv is None or argv[0] in ("-h", "--help", "--version"):
        return
    commands = _subcommands()
    if not any(word in commands for word in argv):
        assert command.rstrip().endswith("..."), f"{where}: `{command}` names no rctmon command"
        return
    if argv[-1] in commands and " " not in command.split("rctmon", 1)[1].strip():
        return  # a mention of a command in prose, not an invocation
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        error = capsys.readouterr().err.strip().splitlines()[-1:] if exc.code else []
        pytest.fail(f"{where}: `{command}` does not parse: {' '.join(error)}")
