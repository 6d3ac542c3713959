"""The house as docs/architecture.md draws it: every import points down, and no module imports itself back.

Each module's imports are read from its source (ast, nothing is imported), at module level and inside
functions alike, and each imported module is mapped to its room (the package that holds it).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# room (import name) -> its folder, as pyproject's package-dir maps them
ROOMS = {
    "softclip": "softclip",
    "softclip.training": "training",
    "softclip.export": "export",
    "softclip.index": "index",
    "softclip.app": "app",
    "softclip.cli": "cli",
}
# The rooms each room may import besides itself: cli -> app -> index -> export -> softclip, and training -> softclip
# (the app's demo trains, the CLI fronts everything).
MAY_IMPORT = {
    "softclip": set(),
    "softclip.training": {"softclip"},
    "softclip.export": {"softclip"},
    "softclip.index": {"softclip.export", "softclip"},
    "softclip.app": {"softclip.index", "softclip.export", "softclip.training", "softclip"},
    "softclip.cli": {"softclip.app", "softclip.index", "softclip.export", "softclip.training", "softclip"},
}


def module_files() -> dict[str, Path]:
    """Every module of every room: import name -> source file."""
    modules = {}
    for room, folder in ROOMS.items():
        for path in sorted((ROOT / folder).glob("*.py")):
            modules[room if path.stem == "__init__" else f"{room}.{path.stem}"] = path
    return modules


MODULES = module_files()


def room_of(module: str) -> str | None:
    """The room (longest matching package) a softclip module lives in; None for anything outside softclip."""
    matches = [room for room in ROOMS if module == room or module.startswith(room + ".")]
    return max(matches, key=len) if matches else None


def imported_modules(module: str, path: Path) -> list[tuple[str, int]]:
    """(softclip module imported, line) for every import statement in the file, wherever it stands."""
    package = module if path.stem == "__init__" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's own package, `level - 1` packages up
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            for alias in node.names:  # `from softclip import index` imports the module softclip.index
                submodule = f"{base}.{alias.name}"
                found.append((submodule if submodule in MODULES else base, node.lineno))
    return sorted({(name, line) for name, line in found if room_of(name) is not None})


def import_graph() -> dict[str, list[tuple[str, int]]]:
    return {module: imported_modules(module, path) for module, path in MODULES.items()}


def home_room(module: str) -> str:
    """The room whose folder holds the module's file (not its name: a file named like a room is still inside)."""
    path = MODULES.get(module)
    return next(room for room, folder in ROOMS.items() if path.parent == ROOT / folder) if path else room_of(module)


def direction_errors(graph: dict[str, list[tuple[str, int]]]) -> list[str]:
    errors = []
    for module, imports in graph.items():
        room = home_room(module)
        for target, line in imports:
            target_room = room_of(target)
            if target_room != room and target_room not in MAY_IMPORT[room]:
                allowed = ", ".join(sorted(MAY_IMPORT[room])) or "nothing outside itself"
                errors.append(
                    f"{MODULES[module].relative_to(ROOT)}:{line}: {module} imports {target}, "
                    f"but {room} may import only {allowed}"
                )
    return errors


def cycles(graph: dict[str, list[tuple[str, int]]]) -> list[list[str]]:
    """One cycle (as a path that returns to its start) per strongly connected group of modules."""
    edges = {module: sorted({target for target, _ in imports if target in graph}) for module, imports in graph.items()}
    found, done = [], set()
    for start in sorted(edges):
        if start in done:
            continue
        stack, on_path = [(start, iter(edges[start]))], [start]
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                on_path.pop()
                done.add(node)
            elif child in on_path:
                found.append(on_path[on_path.index(child) :] + [child])
            elif child not in done:
                stack.append((child, iter(edges[child])))
                on_path.append(child)
    return found


def test_every_room_is_a_package_of_the_distribution() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    for room, folder in ROOMS.items():
        assert f'"{room}" = "{folder}"' in pyproject, f"pyproject.toml does not map {room} to {folder}/"
        assert (ROOT / folder / "__init__.py").is_file(), f"{folder}/ has no __init__.py"


def test_imports_point_down_the_house() -> None:
    errors = direction_errors(import_graph())
    assert not errors, "imports against the direction of docs/architecture.md:\n" + "\n".join(errors)


def test_no_module_imports_itself_back() -> None:
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(cycle) for cycle in found)


def test_the_checks_catch_an_upward_import_and_a_circle() -> None:
    graph = {
        "softclip.model": [("softclip.pretrained", 3)],
        "softclip.pretrained": [("softclip.model", 5), ("softclip.export.onnx_encoder", 9)],
        "softclip.export.onnx_encoder": [],
    }
    MODULES.setdefault("softclip.pretrained", ROOT / "softclip" / "pretrained.py")
    errors = direction_errors(graph)
    assert len(errors) == 1
    assert "softclip.pretrained imports softclip.export.onnx_encoder" in errors[0]
    assert "softclip may import only nothing outside itself" in errors[0]
    assert cycles(graph) == [["softclip.model", "softclip.pretrained", "softclip.model"]]


@pytest.mark.parametrize("module", sorted(MODULES))
def test_every_module_says_what_it_owns(module: str) -> None:
    docstring = ast.get_docstring(ast.parse(MODULES[module].read_text()))
    assert docstring, f"{MODULES[module].relative_to(ROOT)} has no opening docstring saying what it owns"
