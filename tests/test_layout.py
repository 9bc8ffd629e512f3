"""The library's layout: no import loops, nothing imports an entry script (the commands of
align/commands.py, the one list of them), rewards/ and tools/ never import align (tools/ may
import rewards/, never the reverse), importing tools/ stays light, and the layers of the design
(entry scripts on top; run spec and job; data, models and measurement; small utilities at the
bottom) are kept. Read from the source with ast, counting imports inside functions too: a loop
that only runs late is still a loop."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from align.commands import COMMANDS

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("align", "rewards", "tools")
#: the commands' scripts, align/<command>.py, as align/commands.py lists them (the `align` console
#: command runs them by file, never by import)
ENTRY_SCRIPTS = {command.module for command in COMMANDS.values()}
#: what each part of align may import (besides itself and the utilities)
UTILITIES = {"align", "align.errors", "align.files", "align.schema", "align.fields",
             "align.secrets", "align.device"}
LAYERS = {  # package -> packages it may import
    "align.data": set(),
    "align.trainers": set(),  # extensions of trl's trainers: trl only
    "align.measure": {"align.data"},
    "align.models": {"align.data", "align.measure"},
    "align.run": {"align.data", "align.measure", "align.models", "align.trainers"},
}


def modules() -> dict[str, Path]:
    found = {}
    for root in PACKAGES:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """Modules of align/rewards/tools that `name` imports anywhere in its source (a package's
    __init__ counts as imported with any of its submodules, as Python runs it first)."""
    out: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name if is_package else name.rsplit(".", 1)[0]
                for _ in range(node.level - 1):
                    package = package.rsplit(".", 1)[0]
                base = f"{package}.{base}" if base else package
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            while target:  # the module and the packages above it
                if target != name:
                    out.add(target)
                target = target.rpartition(".")[0]
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    found = modules()
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def test_the_walk_sees_the_whole_library(graph):
    assert {"align.run.spec", "align.data.load", "align.models.factory", "align.measure.heldout",
            "rewards.code", "rewards.sandbox", "tools.registry", "tools.calculator",
            "tools.python"} <= set(graph)
    assert len([m for m in graph if m.startswith("align.")]) >= 35


def test_no_import_loops(graph):
    loops, state = [], {}

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            # A package's __init__ importing its modules, which import the package, is no loop.
            if nxt.split(".")[0] in PACKAGES and not (nxt in PACKAGES or node.startswith(nxt + ".")):
                if state.get(nxt) == "open":
                    loops.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
                elif nxt not in state:
                    visit(nxt, stack + [nxt])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not loops, "import loops:\n" + "\n".join(loops)


def test_the_list_of_commands_names_every_script():
    """align/commands.py names exactly the modules of align/ that run as scripts (those with a
    `__main__` block), so a new script is listed, and a listed one exists."""
    scripts = set()
    for path in sorted((REPO / "align").glob("*.py")):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.If) and ast.unparse(node.test) in (
                    "__name__ == '__main__'", "'__main__' == __name__"):
                scripts.add(f"align.{path.stem}")
    assert scripts == ENTRY_SCRIPTS


def test_nothing_imports_an_entry_script(graph):
    bad = {m: sorted(graph[m] & ENTRY_SCRIPTS) for m in graph if graph[m] & ENTRY_SCRIPTS}
    assert not bad


def test_rewards_never_imports_align(graph):
    bad = {m: sorted(i for i in graph[m] if i.startswith("align"))
           for m in graph if m.startswith("rewards")}
    assert not {m: i for m, i in bad.items() if i}


def test_tools_never_imports_align(graph):
    bad = {m: sorted(i for i in graph[m] if i.startswith("align"))
           for m in graph if m.startswith("tools")}
    assert not {m: i for m, i in bad.items() if i}


def test_rewards_never_imports_tools(graph):
    bad = {m: sorted(i for i in graph[m] if i.split(".")[0] == "tools")
           for m in graph if m.startswith("rewards")}
    assert not {m: i for m, i in bad.items() if i}


def test_importing_tools_is_light():
    code = (
        "import sys, tools; "
        "heavy = [m for m in ('torch', 'trl', 'transformers', 'align') if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_layers(graph):
    problems = []
    for module, targets in graph.items():
        if not module.startswith("align.") or module in ENTRY_SCRIPTS:
            continue
        layer = next((p for p in LAYERS if module == p or module.startswith(p + ".")), None)
        for target in targets:
            if not target.startswith("align") or target in UTILITIES:
                continue
            if layer is None:  # a utility: only other utilities
                problems.append(f"{module} (a utility) imports {target}")
                continue
            package = next((p for p in LAYERS if target == p or target.startswith(p + ".")), None)
            if package != layer and package not in LAYERS[layer]:
                problems.append(f"{module} imports {target}")
    assert not problems, "\n".join(problems)
