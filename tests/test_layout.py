"""The package's structure: layers as folders, imports only going down, no circles, no
module over 600 lines, every public name still importable from its old path.

Read from the source (the import statements, as Python's own parser sees them), so
that a change which breaks the layering fails here before anyone reads the diff.
Imports under ``if TYPE_CHECKING:`` run for type checkers only and are left out.
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "tornadose"
# Lower numbers are lower layers; a module may import its own layer or lower ones.
LAYERS = {"core": 1, "transport": 2, "pubsub": 3, "redis": 4, "web": 5}
FACES = {"tornadose", "tornadose.stores", "tornadose.topics", "tornadose.handlers",
         "tornadose.metrics"}
MAX_LINES = 600


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The tornadose modules ``name`` imports at run time (lazily too)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other)
                continue
            if isinstance(child, ast.ImportFrom):
                if child.level:
                    base = package.split(".")[: len(package.split(".")) - child.level + 1]
                    target = ".".join(base + ([child.module] if child.module else []))
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    out.add(sub if sub in modules else target)
            elif isinstance(child, ast.Import):
                out.update(alias.name for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text()))
    return {m for m in out if m in modules and m != name}


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(name: str) -> int | None:
    parts = name.split(".")
    return LAYERS.get(parts[1]) if len(parts) > 1 else None


def test_no_import_circle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def walk(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                pytest.fail("import circle: " + " -> ".join(stack[stack.index(nxt):] + [nxt]))
            if nxt not in state:
                walk(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            walk(node)


def test_imports_only_go_down_and_never_into_a_face():
    wrong = []
    for name, targets in _graph().items():
        here = _layer(name)
        for target in targets:
            there = _layer(target)
            if target in FACES and name.startswith(tuple(f"tornadose.{k}" for k in LAYERS)):
                wrong.append(f"{name} imports the public face {target}")
            elif here is not None and there is not None and there > here:
                wrong.append(f"{name} (layer {here}) imports {target} (layer {there})")
    assert not wrong, "\n".join(wrong)


def test_the_core_imports_nothing_above_it():
    for name, targets in _graph().items():
        if name.startswith("tornadose.core"):
            assert all(t.startswith("tornadose.core") for t in targets), (name, targets)


def test_no_library_module_over_600_lines_and_each_says_its_job():
    for name, path in _modules().items():
        if name.startswith("tornadose.demo"):
            continue
        lines = len(path.read_text().splitlines())
        assert lines <= MAX_LINES, f"{path} has {lines} lines"
        assert ast.get_docstring(ast.parse(path.read_text())), f"{path} has no docstring"


# Every public name of the modules a user imports, as the last flat layout had them.
PUBLIC = {
    "tornadose": ["__version__", "backend", "listen", "make_server"],
    "tornadose.stores": [
        "DEFAULT_CAPACITY", "DEFAULT_MAX_BYTES", "DEFAULT_MAX_MESSAGE_SIZE",
        "DEFAULT_WRITE_TIMEOUT", "GAP_EVENT", "MAX_WRITE_DELAY", "check_write_delay",
        "SUBMITTED", "BaseStore", "DataStore", "QueueStore", "RedisStore",
        "RedisStreamStore",
    ],
    "tornadose.topics": [
        "DEFAULT_MAX_TOPICS", "DEFAULT_MAX_TOPICS_PER_SUBSCRIBER", "TOPIC_PATTERN",
        "TopicError", "TopicNameError", "TopicLimitError", "UnknownTopicError",
        "check_topic_name", "Topic", "TopicRegistry",
    ],
    "tornadose.handlers": [
        "DEFAULT_OUTBOX_LIMIT", "DEFAULT_SSE_HEARTBEAT_INTERVAL", "DEFAULT_SSE_RETRY",
        "DEFAULT_SSE_RETRY_JITTER", "DEFAULT_FD_HEADROOM", "DEFAULT_WS_MAX_INCOMING",
        "DEFAULT_WS_REQUESTS_PER_SECOND", "BaseHandler", "EventSource",
        "WebSocketSubscriber", "TopicEventSource", "SUBSCRIBED_EVENT", "ERROR_EVENT",
        "TopicWebSocketSubscriber",
    ],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_every_public_name_is_where_it_was(module):
    imported = importlib.import_module(module)
    missing = [name for name in PUBLIC[module] if not hasattr(imported, name)]
    assert not missing, missing
