"""The docs against the code: every ``make`` target they mention exists in the Makefile, and every
``--flag`` they give one of the project's commands is in that command's ``--help``.

Flags are read from ``python -m MODULE --help`` at test time (never a copied list), so a flag a
command gains or loses is checked against what the code says now.

Which flags belong to which command:

* on a command line: ``python -m MODULE ...`` up to the end of the command (a line end without a
  ``\\`` continuation, the end of an inline code span, or the next ``python -m``). A shell
  comment on that line counts: ``python -m localgateway.token --sub a  # --ttl 3600``;
* ``make run ARGS="..."``: the gateway's flags (``ARGS`` only reaches ``make run``);
* a bare ``--flag`` in prose or a table (not in a fenced code block) belongs to the command the
  document (or README section) is about: see ``PROSE``.  Bare flags elsewhere (``mypy
  --strict``, ``chalice package --merge-template``, the AWS CLI) are other tools' and are not
  checked.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: The project's commands whose flags the docs may mention.
COMMANDS = (
    "localgateway",
    "localgateway.token",
    "bench",
    "bench.capacity",
    "bench.roundtrip",
    "deploy.package",
    "deploy.policies",
    "wsrooms_client",
    "tests.reliability.soak",
)

#: Bare flags (outside a command line): document, and README section heading or None for the
#: whole document -> the command they belong to.
PROSE: dict[tuple[str, str | None], str] = {
    ("README.md", "Local gateway"): "localgateway",
    ("docs/local-gateway.md", None): "localgateway",
    ("docs/reliability.md", None): "localgateway",
    ("docs/benchmarks.md", None): "localgateway",
    ("docs/python-client.md", None): "wsrooms_client",
    ("docs/security.md", None): "localgateway.token",
}

FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")
COMMAND = re.compile(r"python -m ([A-Za-z_][\w.]*)")
#: A word after the module may be a subcommand (``python -m localgateway invoke FN --event F``).
SUBCOMMAND = re.compile(r" ([a-z][a-z0-9_-]*)(?=[ `\n]|$)")
MAKE = re.compile(r"\bmake ([a-z][a-z0-9_-]*)")
ARGS = re.compile(r"ARGS=\"([^\"]*)\"")
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
INLINE = re.compile(r"`([^`\n]+)`")


@dataclass(frozen=True)
class Mention:
    doc: str
    line: int
    command: str
    flag: str
    #: The word after the module on a command line, when there is one: a subcommand candidate
    #: (checked against ``python -m MODULE WORD --help`` when that is a subcommand's help).
    sub: str | None = None
    #: A bare flag in prose (attributed by ``PROSE``), not on a command line.
    prose: bool = False


def _line_of(text: str, index: int) -> int:
    return text.count("\n", 0, index) + 1


def _command_end(text: str, start: int) -> int:
    """Where the command starting at ``start`` ends (exclusive)."""
    i = start
    while i < len(text):
        if text[i] == "`":
            return i
        if text[i] == "\n" and not text[:i].rstrip(" ").endswith("\\"):
            return i
        if text.startswith("python -m ", i):
            return i
        i += 1
    return i


def command_mentions(doc: str, text: str) -> Iterator[Mention]:
    """``--flags`` on ``python -m MODULE`` command lines and in ``ARGS="..."``."""
    for match in COMMAND.finditer(text):
        module = match.group(1).rstrip(".")
        end = _command_end(text, match.end())
        word = SUBCOMMAND.match(text, match.end(), end)
        sub = word.group(1) if word else None
        for flag in FLAG.finditer(text, match.end(), end):
            yield Mention(doc, _line_of(text, flag.start()), module, flag.group(), sub)
    for match in ARGS.finditer(text):
        for flag in FLAG.findall(match.group(1)):
            yield Mention(doc, _line_of(text, match.start()), "localgateway", flag)


def _skipped_spans(text: str) -> list[tuple[int, int]]:
    """Command lines (checked against their own command) and fenced code blocks (commands of
    other tools: a bare flag there is not prose)."""
    spans = [m.span() for m in FENCE.finditer(text)]
    for match in COMMAND.finditer(text):
        spans.append((match.start(), _command_end(text, match.end())))
    for match in ARGS.finditer(text):
        spans.append(match.span())
    return spans


def _sections(text: str) -> Iterator[tuple[str, int, int]]:
    """(heading, start, end) of every ``## `` section."""
    heads = [(m.group(1).strip(), m.start()) for m in re.finditer(r"^## (.+)$", text, re.M)]
    for (title, start), (_, end) in zip(heads, [*heads[1:], ("", len(text))], strict=True):
        yield title, start, end


def prose_mentions(doc: str, text: str) -> Iterator[Mention]:
    """Bare ``--flags`` in a document or section that is about one command (``PROSE``)."""
    spans = _skipped_spans(text)
    regions: list[tuple[str, int, int]] = []
    for (name, section), command in PROSE.items():
        if name != doc:
            continue
        if section is None:
            regions.append((command, 0, len(text)))
        else:
            regions += [(command, s, e) for title, s, e in _sections(text) if title == section]
    for command, start, end in regions:
        for flag in FLAG.finditer(text, start, end):
            if any(s <= flag.start() < e for s, e in spans):
                continue
            yield Mention(doc, _line_of(text, flag.start()), command, flag.group(), prose=True)


def flag_mentions(doc: str, text: str) -> list[Mention]:
    return [*command_mentions(doc, text), *prose_mentions(doc, text)]


def make_mentions(text: str) -> set[str]:
    """``make TARGET`` inside code (fenced blocks and inline code spans), not in prose."""
    code = [m.group() for m in FENCE.finditer(text)] + INLINE.findall(text)
    return {target for chunk in code for target in MAKE.findall(chunk)}


def help_flags(help_text: str) -> set[str]:
    """The options argparse lists: the usage line, and each option line up to its help text."""
    flags: set[str] = set()
    in_usage = False
    for line in help_text.splitlines():
        stripped = line.strip()
        if line.startswith("usage:"):
            in_usage = True
        elif not stripped:
            in_usage = False
        if in_usage:
            flags.update(FLAG.findall(line))
        elif stripped.startswith("-"):
            flags.update(FLAG.findall(re.split(r"\s{2,}", stripped)[0]))
    return flags


@cache
def help_text(module: str, sub: str | None = None) -> str | None:
    """``python -m MODULE [SUB] --help``. With ``sub``: None unless SUB is a subcommand (its
    usage line names it; a positional argument would get the module's own help instead)."""
    result = subprocess.run(
        [sys.executable, "-m", module, *([sub] if sub else []), "--help"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    if sub is None:
        assert result.returncode == 0, f"python -m {module} --help: {result.stderr}"
        return result.stdout
    usage = result.stdout.split("\n", 1)[0]
    is_sub = result.returncode == 0 and re.search(rf"\b{re.escape(module)} {re.escape(sub)}\b",
                                                  usage)
    return result.stdout if is_sub else None


def accepted_flags(module: str, sub: str | None = None) -> set[str]:
    """The flags of ``python -m MODULE SUB`` when SUB is a subcommand, else of the module."""
    text = help_text(module, sub) if sub else None
    return help_flags(text if text is not None else help_text(module) or "")


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return {m.group(1) for m in re.finditer(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M)}


def _docs() -> list[tuple[str, str]]:
    return [(str(p.relative_to(ROOT)), p.read_text(encoding="utf-8")) for p in DOCS]


# --- the checks ---------------------------------------------------------------------------


def test_every_make_target_in_the_docs_exists() -> None:
    targets = makefile_targets()
    assert {"test", "run"} <= targets  # the parser reads this Makefile
    missing = sorted(
        f"{doc}: make {target}"
        for doc, text in _docs()
        for target in make_mentions(text)
        if target not in targets
    )
    assert not missing, "make targets the docs mention but the Makefile lacks:\n" + "\n".join(
        missing
    )


@pytest.mark.parametrize("command", COMMANDS)
def test_every_flag_the_docs_give_a_command_is_in_its_help(command: str) -> None:
    assert "--help" in accepted_flags(command), help_text(command)
    mentions = [m for doc, text in _docs() for m in flag_mentions(doc, text)
                if m.command == command]
    # Prose about a command may be about any of its subcommands the docs show.
    prose_ok = accepted_flags(command).union(
        *(accepted_flags(command, m.sub) for m in mentions if m.sub)
    )
    unknown = sorted(
        f"{m.doc}:{m.line}: {m.flag}" for m in set(mentions)
        if m.flag not in (prose_ok if m.prose else accepted_flags(command, m.sub))
    )
    assert not unknown, (
        f"flags the docs give `python -m {command}` that its --help does not list:\n"
        + "\n".join(unknown)
    )


def test_the_docs_mention_only_known_commands_checked_here() -> None:
    """A new ``python -m`` command of this project in the docs gets its flags checked too."""
    ours = ("localgateway", "bench", "deploy", "wsrooms_client", "tests")
    others = {"deploy.chalice_cli", "deploy.policies", "tests.browser.screenshot"}
    unchecked = sorted(
        {f"{doc}: python -m {m.group(1)}" for doc, text in _docs()
         for m in COMMAND.finditer(text)
         if m.group(1).split(".")[0] in ours and m.group(1) not in COMMANDS
         and m.group(1) not in others}
    )
    assert not unchecked, "add these to COMMANDS (or to `others` if they take no flags here):\n" + (
        "\n".join(unchecked)
    )


# --- the extractor itself: it finds what it must, and only that ----------------------------

SAMPLE = """\
## Local gateway

Chaos knobs (`--latency-ms`, `--no-such-knob`) and `mypy --strict` in prose.

```sh
python -m localgateway [--port 8000] \\
    [--ws-port 8001]
aws cloudformation deploy --stack-name x
TOKEN="$(python -m localgateway.token --sub a)" # --ttl 60
python -m localgateway invoke FN [--event FILE]
```

Run `make run ARGS="--throttle-rate 0.1"` or `make nothing-here`; make sure of it.

## Deploy

`python -m deploy.package --stage prod OUT`: runs `chalice package --merge-template`.
"""


def test_the_extractor_attributes_flags_to_their_command() -> None:
    found = {(m.command, m.flag) for m in flag_mentions("README.md", SAMPLE)}
    assert found == {
        ("localgateway", "--latency-ms"),
        ("localgateway", "--no-such-knob"),
        ("localgateway", "--strict"),  # prose of the gateway's section: checked, and would fail
        ("localgateway", "--port"),
        ("localgateway", "--ws-port"),
        ("localgateway.token", "--sub"),
        ("localgateway.token", "--ttl"),
        ("localgateway", "--throttle-rate"),
        ("deploy.package", "--stage"),
        ("localgateway", "--event"),
    }
    subs = {(m.flag, m.sub) for m in flag_mentions("README.md", SAMPLE) if not m.prose}
    assert ("--event", "invoke") in subs and ("--port", None) in subs
    assert make_mentions(SAMPLE) == {"run", "nothing-here"}


def test_a_positional_word_is_not_taken_for_a_subcommand() -> None:
    assert help_text("wsrooms_client", "lobby") is None  # `url` is positional: the main help
    assert accepted_flags("wsrooms_client", "lobby") == accepted_flags("wsrooms_client")
    assert "--token-file" in accepted_flags("wsrooms_client")


def test_help_flags_reads_options_not_descriptions() -> None:
    text = """\
usage: prog [-h] [--port PORT]
            [--no-reload]

Mentions --not-an-option in the description.

options:
  -h, --help   show this help message and exit
  --port PORT  the port (see --also-not-one)
  --log-level {DEBUG,INFO}
               level
"""
    assert help_flags(text) == {"--help", "--port", "--no-reload", "--log-level"}
