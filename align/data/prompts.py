"""Prompts from nothing: a template file filled in with each of a list of seed topics.

    python align/generate.py prompts.template=tmpl.txt prompts.topics=[sorting,graphs,parsing]
    python align/generate.py prompts.template=tmpl.txt prompts.topics=topics.txt

The template is a text file holding the placeholder `{topic}` (other braces are left as they
are: only `{topic}` is replaced, so a template may show JSON). Topics are a list of strings, or
a text file with one topic a line (blank lines and lines starting with `#` are skipped). Each
topic gives one prompt row `{prompt, topic}`: the prompt is a user message (`chat=True`) or the
filled-in text itself. Everything is checked by `check_template_source` before any file is
read twice or anything heavy loads; problems name the file, the line and the fix.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

PLACEHOLDER = "{topic}"


def _topics_from(topics: Any, where: str) -> tuple[list[str], list[str]]:
    """(topics, problems) from a list or a file path."""
    if isinstance(topics, str):
        path = Path(topics)
        if not path.is_file():
            return [], [(f"{where}={topics!r}: no such file; give a list ({where}=[a,b,c]) or "
                         "a text file with one topic a line")]
        found = []
        for line in path.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                found.append(line)
        if not found:
            return [], [f"{where}: {path} holds no topics (one a line; '#' lines are comments)"]
        return found, []
    if not isinstance(topics, (list, tuple)) or not topics:
        return [], [f"{where}={topics!r}: a non-empty list of topics or a file with one a line"]
    problems = [f"{where}[{i}]={t!r}: each topic is a non-empty string"
                for i, t in enumerate(topics) if not isinstance(t, str) or not t.strip()]
    return [str(t).strip() for t in topics], problems


def check_template_source(template: Any, topics: Any,
                          where: str = "prompts") -> tuple[list[str], list[str]]:
    """(the filled-in prompt texts, problems): the template file exists, is text, holds the
    placeholder; the topics are a non-empty list (or file) without duplicates."""
    problems: list[str] = []
    if not isinstance(template, str) or not template:
        return [], [f"{where}.template={template!r}: the path of a text file holding {PLACEHOLDER}"]
    path = Path(template)
    if not path.is_file():
        return [], [f"{where}.template={template!r}: no such file"]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        return [], [f"{where}.template={template!r}: cannot be read as UTF-8 text ({exc})"]
    if PLACEHOLDER not in text:
        problems.append(f"{where}.template: {path} has no {PLACEHOLDER} placeholder: write it "
                        "where each topic goes")
    if topics is None:
        problems.append(f"{where}.topics is not set: {where}.template needs a list of topics "
                        f"({where}.topics=[a,b,c]) or a file with one a line")
        return [], problems
    found, more = _topics_from(topics, f"{where}.topics")
    problems += more
    seen: dict[str, int] = {}
    for i, topic in enumerate(found):
        if topic in seen:
            problems.append(f"{where}.topics: {topic!r} is listed twice (entries {seen[topic]} "
                            f"and {i}); each topic gives one prompt")
        seen.setdefault(topic, i)
    if problems:
        return [], problems
    return [text.replace(PLACEHOLDER, topic).strip() for topic in found], []


def template_rows(texts: list[str], topics: list[str], chat: bool = True) -> list[dict]:
    """One prompt row per topic: `{prompt, topic}` (the prompt a user message when `chat`)."""
    return [{"prompt": [{"role": "user", "content": t}] if chat else t, "topic": topic}
            for t, topic in zip(texts, topics)]


def topics_of(topics: Any) -> list[str]:
    """The topics of a checked `topics` value (a list or a file)."""
    return _topics_from(topics, "topics")[0]
