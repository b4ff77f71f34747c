"""The code's shape, checked: small classes and functions, attributes declared where a reader looks for them, and one
definition of each shared helper (docs/development.md)."""

import ast
import functools
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE = sorted(path for folder in ("sfd", "scripts", "tools") for path in (ROOT / folder).rglob("*.py"))
MAX_CLASS_LINES, MAX_FUNCTION_LINES = 200, 80


@functools.cache
def parsed(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def span(node: ast.AST) -> int:
    return node.end_lineno - node.lineno + 1


def test_no_class_over_200_lines_and_no_function_over_80():
    too_long = [f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({span(node)} lines)"
                for path in CODE for node in ast.walk(parsed(path))
                if (isinstance(node, ast.ClassDef) and span(node) > MAX_CLASS_LINES)
                or (isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and span(node) > MAX_FUNCTION_LINES)]
    assert not too_long, "\n".join(too_long)


def self_attributes_assigned(function: ast.FunctionDef) -> set[str]:
    """Names X of every ``self.X = ...`` (plain, annotated, augmented or tuple assignment) in ``function``."""
    names = set()
    for node in ast.walk(function):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AnnAssign, ast.AugAssign)) else [])
        for target in targets:
            for leaf in ast.walk(target):
                if (isinstance(leaf, ast.Attribute) and isinstance(leaf.value, ast.Name) and leaf.value.id == "self"
                        and isinstance(leaf.ctx, ast.Store)):
                    names.add(leaf.attr)
    return names


def declared_in_class_body(cls: ast.ClassDef) -> set[str]:
    """Class-level names: dataclass fields, class attributes, properties and methods."""
    names = set()
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, ast.Assign):
            names.update(target.id for target in node.targets if isinstance(target, ast.Name))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            names.add(node.name)
    return names


def test_no_attribute_is_created_outside_init():
    """Every attribute a method sets was given a value in ``__init__`` (or ``__post_init__``) or declared in the class
    body, so reading ``__init__`` tells what an object holds. Private state of a library base class (torchrun's
    agent) is the base's own, set where the base documents it, so a class with a base from outside the project may
    set underscored attributes."""
    found = []
    project_classes = {node.name for path in CODE for node in ast.walk(parsed(path)) if isinstance(node, ast.ClassDef)}
    for path in CODE:
        for cls in (node for node in ast.walk(parsed(path)) if isinstance(node, ast.ClassDef)):
            external_base = any(isinstance(base, (ast.Name, ast.Attribute)) and ast.unparse(base).split(".")[-1]
                                not in project_classes | {"object"} for base in cls.bases)
            methods = [node for node in cls.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
            initialised = declared_in_class_body(cls).union(
                *(self_attributes_assigned(m) for m in methods if m.name in ("__init__", "__post_init__")))
            for method in methods:
                if method.name in ("__init__", "__post_init__"):
                    continue
                for name in sorted(self_attributes_assigned(method) - initialised):
                    if external_base and name.startswith("_"):
                        continue
                    found.append(f"{path.relative_to(ROOT)}:{method.lineno} {cls.name}.{method.name} sets self.{name}")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("name", ["latest_checkpoint", "file_sha256", "peak_memory_mib", "markdown_table",
                                  "checkpoints_newest_first"])
def test_shared_helpers_are_defined_once(name):
    definitions = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in CODE for node in ast.walk(parsed(path))
                   if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == name]
    assert len(definitions) == 1, definitions


def test_no_nested_check_helpers_and_no_override_option():
    """Validation rules raise through sfd.config.require; config overrides are section.key=value tokens (sfd.cli)."""
    nested = [f"{path.relative_to(ROOT)}:{inner.lineno}" for path in CODE for outer in ast.walk(parsed(path))
              if isinstance(outer, ast.FunctionDef) for inner in ast.walk(outer)
              if inner is not outer and isinstance(inner, ast.FunctionDef) and inner.name == "check"]
    assert not nested, nested
    sources = [*CODE, *sorted(ROOT.glob("*.sh")), ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    options = [str(path.relative_to(ROOT)) for path in sources if re.search(r"--override\b", path.read_text())]
    assert not options, options
