"""The documentation as a reader follows it: README.md stays a short front door, its two commands
are the ones CI runs, and every relative link in README.md, docs/*.md and benchmarks/**/*.md
leads to a file that exists and, with an `#anchor`, to a heading of that file (anchors as GitHub
makes them from headings)."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
README_MAX_LINES = 320

FENCE = re.compile(r"^\s*(```|~~~)")
CODE_SPAN = re.compile(r"`[^`\n]*`")
#: [text](target) and ![alt](target), with an optional "title"
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"")


def markdown_files() -> list[Path]:
    found = [README, *sorted((REPO / "docs").glob("*.md")),
             *sorted((REPO / "benchmarks").rglob("*.md"))]
    return [p for p in found if p.is_file()]


def prose_lines(text: str) -> list[tuple[int, str]]:
    """(line number, line) outside fenced code blocks."""
    out, fenced = [], False
    for n, line in enumerate(text.splitlines(), 1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            out.append((n, line))
    return out


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup dropped, lowercase, punctuation dropped (letters,
    digits, '_', '-' and spaces stay), each space a '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"<[^>]+>", "", text).replace("`", "")
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    """Every anchor of a markdown file: its headings' slugs (a repeated one gets -1, -2 ...) and
    explicit <a name=...> anchors."""
    found, seen = set(), {}
    for _, line in prose_lines(path.read_text()):
        m = HEADING.match(line)
        if m:
            base = slug(m[2])
            n = seen.get(base, 0)
            seen[base] = n + 1
            found.add(base if n == 0 else f"{base}-{n}")
        found.update(HTML_ANCHOR.findall(line))
    return found


def links(path: Path) -> list[tuple[int, str]]:
    """(line number, target) of the relative links of a markdown file, outside code."""
    out = []
    for n, line in prose_lines(path.read_text()):
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # https:, mailto: ...
                continue
            out.append((n, target))
    return out


def broken_links(path: Path) -> list[str]:
    problems = []
    for n, target in links(path):
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.relative_to(REPO)}:{n}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with the anchor #{anchor}")
    return problems


def test_the_link_check_sees_the_docs():
    files = markdown_files()
    assert README in files and REPO / "docs" / "architecture.md" in files
    assert REPO / "docs" / "results.md" in files
    assert sum(len(links(p)) for p in files) >= 40


def test_slugs_follow_github():
    assert slug("Time to accuracy against a plain trl pipeline") == \
        "time-to-accuracy-against-a-plain-trl-pipeline"
    assert slug("Math answers: `accuracy`") == "math-answers-accuracy"
    assert slug("Tools and environments: agentic GRPO") == "tools-and-environments-agentic-grpo"
    assert slug("What `resume` does") == "what-resume-does"
    assert slug("On-policy DPO, 3 seeds (2026-12-01)") == "on-policy-dpo-3-seeds-2026-12-01"


def test_a_broken_link_is_found(tmp_path):
    page = tmp_path / "page.md"
    (tmp_path / "other.md").write_text("# Other\n\n## A section: here\n")
    page.write_text("# Page\n\n[ok](other.md#a-section-here) [self](#page) `[code](nowhere.md)`\n"
                    "[gone](missing.md) [bad anchor](other.md#no-such)\n\n```\n[fenced](x.md)\n```\n")
    targets = [t for _, t in links(page)]
    assert targets == ["other.md#a-section-here", "#page", "missing.md", "other.md#no-such"]
    problems = []
    for n, target in links(page):
        file_part, _, anchor = target.partition("#")
        dest = (page.parent / file_part) if file_part else page
        if not dest.exists():
            problems.append(target)
        elif anchor and anchor not in anchors(dest):
            problems.append(target)
    assert problems == ["missing.md", "other.md#no-such"]


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(REPO)))
def test_every_relative_link_leads_somewhere(path):
    problems = broken_links(path)
    assert not problems, "\n".join(problems)


def test_readme_is_a_front_door():
    lines = README.read_text().splitlines()
    assert len(lines) <= README_MAX_LINES, (
        f"README.md has {len(lines)} lines (at most {README_MAX_LINES}): move the detail to docs/")


def section(text: str, title: str) -> str:
    m = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert m, f"README.md has no '## {title}' section"
    return m[1]


def bash_blocks(text: str) -> list[str]:
    return [b.strip() for b in re.findall(r"^```bash\n(.*?)^```", text, re.M | re.S)]


def test_readme_commands_are_the_ones_ci_runs():
    """The test command is the line .ci/run runs, byte for byte; the first command sets up the
    same environment (venv, the same torch pin) and runs GRPO instead of the tests."""
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    ci_line = next(line for line in ci if line.startswith("python3 -m venv .venv"))
    assert ci_line.endswith(" && pytest") and " -e '.[" in ci_line
    first, tests = bash_blocks(section(README.read_text(), "Two commands"))[:2]
    assert tests == ci_line
    assert first == ci_line.split(" -e '.[")[0] + " -e . && python align/grpo.py"
