"""Only `streams/transport/` may touch faust's and aiokafka's internals.

Outside it, no module may import a private name from faust, mode or aiokafka, subclass one of
their classes, or read a private attribute (`x._name`) of anything but itself (`self`, `cls`):
the receiver's type is not known statically, so every such access is refused unless the
receiver is a name imported from another library (confluent-kafka's `KafkaError._MSG_TIMED_OUT`
is its documented API) or a short list of standard-library ones. A planted access in a
temporary module is found (the check can fail)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("core", "schemas", "connectors", "streams", "api", "mohallamart")
ALLOWED_INSIDE = ROOT / "streams" / "transport"
LIBRARIES = ("faust", "mode", "aiokafka")
#: private attributes of the standard library that are documented API
STDLIB_OK = {("os", "_exit"), ("sys", "_getframe")}


def _is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _imported_names(tree: ast.AST) -> tuple[set[str], set[str]]:
    """(names bound to faust/mode/aiokafka, names bound to any other module's objects)."""
    lib: set[str] = set()
    other: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                bound = (a.asname or a.name).split(".")[0]
                (lib if a.name.split(".")[0] in LIBRARIES else other).add(bound)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = {a.asname or a.name for a in node.names}
            (lib if node.module.split(".")[0] in LIBRARIES else other).update(names)
    return lib, other


def violations(path: Path) -> list[str]:
    """Every private access of faust/aiokafka (or unknown receivers) in one module."""
    tree = ast.parse(path.read_text(), str(path))
    lib, other = _imported_names(tree)
    out: list[str] = []
    name = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
    for node in ast.walk(tree):
        where = f"{name}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in LIBRARIES:
                out += [
                    f"{where}: imports {node.module}.{a.name}"
                    for a in node.names
                    if _is_private(a.name)
                ]
        elif isinstance(node, ast.ClassDef):
            for base in node.bases:
                root = base
                while isinstance(root, ast.Attribute):
                    root = root.value
                if isinstance(root, ast.Name) and root.id in lib:
                    out.append(f"{where}: class {node.name} subclasses {ast.unparse(base)}")
        elif isinstance(node, ast.Attribute) and _is_private(node.attr):
            recv = node.value
            if isinstance(recv, ast.Name) and recv.id in ("self", "cls"):
                continue
            if isinstance(recv, ast.Name) and (recv.id, node.attr) in STDLIB_OK:
                continue
            root = recv
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(root, ast.Name) and root.id in other:
                # a name of another library, e.g. confluent_kafka's KafkaError._MSG_TIMED_OUT
                # (librdkafka's local error codes) or argparse._SubParsersAction
                continue
            out.append(f"{where}: reads {ast.unparse(node)}")
    return out


def _modules() -> list[Path]:
    files = []
    for pkg in PACKAGES:
        for f in sorted((ROOT / pkg).rglob("*.py")):
            if ALLOWED_INSIDE not in f.parents:
                files.append(f)
    return files


def test_no_private_access_outside_the_transport() -> None:
    found = [v for f in _modules() for v in violations(f)]
    assert found == [], "\n".join(found)


def test_a_planted_private_access_is_found(tmp_path: Path) -> None:
    planted = tmp_path / "agent.py"
    planted.write_text(
        "import faust\n"
        "from faust.streams import _current_event\n"
        "class W(faust.Worker):\n"
        "    pass\n"
        "def f(app):\n"
        "    return app.consumer._thread\n"
    )
    found = violations(planted)
    assert any("imports faust.streams._current_event" in v for v in found), found
    assert any("class W subclasses faust.Worker" in v for v in found), found
    assert any("reads app.consumer._thread" in v for v in found), found
    clean = tmp_path / "clean.py"
    clean.write_text(
        "import os\nclass A:\n    def f(self):\n        os._exit(0)\n        return self._x\n"
    )
    assert violations(clean) == []
