"""The server's Settings fields, read from settings.py with ast (no import: robust to a concurrent edit that
breaks it), and whether a string is a valid value of each."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SETTINGS_PY = Path(__file__).resolve().parents[3] / "services" / "acg2vec_server" / "settings.py"
PYDANTIC_BOOLS = {"0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes"}


@dataclass
class SettingField:
    name: str
    kind: str  # int, float, bool, str, path, literal
    choices: tuple[str, ...] = ()
    default: Any = None
    secret: bool = False  # a SecretStr: must come from a Secret, never a ConfigMap or a literal env value

    def problem(self, value: str) -> str | None:
        try:
            if self.kind == "int":
                int(value)
            elif self.kind == "float":
                float(value)
        except ValueError:
            return f"{value!r} is not a valid {self.kind}"
        if self.kind == "bool" and value.strip().lower() not in PYDANTIC_BOOLS:
            return f"{value!r} is not a boolean"
        if self.kind == "literal" and value not in self.choices:
            return f"{value!r} is not one of {self.choices}"
        return None


def _literal_choices(node: ast.expr) -> tuple[str, ...] | None:
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name) and node.value.id == "Literal":
        elts = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        return tuple(e.value for e in elts if isinstance(e, ast.Constant))
    return None


def settings_fields(path: Path = SETTINGS_PY) -> dict[str, SettingField]:
    """Fields of `Settings`, read from the source with ast (robust to an import that a concurrent edit breaks)."""
    tree = ast.parse(path.read_text())
    aliases: dict[str, tuple[str, ...]] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            choices = _literal_choices(node.value)
            if choices is not None:
                aliases[node.targets[0].id] = choices
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Settings")
    fields: dict[str, SettingField] = {}
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name, ann = node.target.id, node.annotation
        if name == "model_config":
            continue
        choices = _literal_choices(ann)
        if isinstance(ann, ast.Name) and ann.id in aliases:
            kind, choices = "literal", aliases[ann.id]
        elif choices is not None:
            kind = "literal"
        elif isinstance(ann, ast.Name) and ann.id in {"int", "float", "bool", "str"}:
            kind = ann.id
        else:
            kind = "str"  # Path, Path | None, ...: any string
        default = None
        value = node.value
        if isinstance(value, ast.Call) and getattr(value.func, "id", "") == "Field" and value.args:
            value = value.args[0]
        if isinstance(value, ast.Constant):
            default = value.value
        elif value is not None:
            try:
                default = ast.literal_eval(value)
            except ValueError:
                default = None
        secret = isinstance(ann, ast.Name) and ann.id == "SecretStr"
        fields[name] = SettingField(name, kind, choices or (), default, secret)
    return fields
