"""Finds every error reason the Python code raises, with the gRPC code it raises it with, by
reading the source: `InvalidArgument("FIELD_REQUIRED", ...)`, and helpers that take the reason as
their first parameter (`invalid("FIELD_REQUIRED", ...)` where `def invalid(reason, ...)` builds an
ApiError from it). Anything else that builds an ApiError from a reason the scan cannot see is
reported, so the scan stays complete as the code changes."""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
ERRORS_MODULE = ROOT / "posmesh" / "common" / "errors.py"


@dataclass(frozen=True)
class Raised:
    reason: str
    code: str  # grpc.StatusCode name
    where: str  # "services/orders/domain.py:123"


def error_classes() -> dict[str, str]:
    """ApiError and its subclasses -> the gRPC code name they carry."""
    classes: dict[str, str] = {}
    for node in ast.parse(ERRORS_MODULE.read_text()).body:
        if not isinstance(node, ast.ClassDef):
            continue
        for item in node.body:
            if (isinstance(item, (ast.Assign, ast.AnnAssign)) and isinstance(item.value, ast.Attribute)
                    and _target_name(item) == "code"):
                classes[node.name] = item.value.attr
        if node.name not in classes and any(_name(base) in classes for base in node.bases):
            classes[node.name] = classes[next(_name(b) for b in node.bases if _name(b) in classes)]
    return classes


def _target_name(node: ast.Assign | ast.AnnAssign) -> str | None:
    target = node.targets[0] if isinstance(node, ast.Assign) else node.target
    return target.id if isinstance(target, ast.Name) else None


def _name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    return None


def _module_file(dotted: str) -> Path:
    return ROOT.joinpath(*dotted.split(".")).with_suffix(".py")


class _Module:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.tree = ast.parse(path.read_text())
        self.functions = {node.name: node for node in ast.walk(self.tree)
                          if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}
        # local name -> (module file, name in it); a module alias maps to (file, None)
        self.imports: dict[str, tuple[Path, str | None]] = {}
        for node in ast.walk(self.tree):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    local = alias.asname or alias.name
                    submodule = _module_file(f"{node.module}.{alias.name}")
                    self.imports[local] = ((submodule, None) if submodule.exists()
                                           else (_module_file(node.module), alias.name))


def scan(folders: list[Path]) -> tuple[list[Raised], list[str]]:
    """(every reason raised, every ApiError built from a reason the scan cannot see)."""
    classes = error_classes()
    modules = {path: _Module(path) for folder in folders for path in sorted(folder.rglob("*.py"))}

    def helper_code(module: _Module, function: ast.AST) -> str | None:
        """The code of an ApiError a function builds from its first parameter `reason`."""
        params = [arg.arg for arg in function.args.args]
        if params[:1] != ["reason"]:
            return None
        for call in ast.walk(function):
            if (isinstance(call, ast.Call) and _name(call.func) in classes and call.args
                    and isinstance(call.args[0], ast.Name) and call.args[0].id == "reason"):
                return classes[_name(call.func)]
        return None

    def resolve(module: _Module, call: ast.Call) -> tuple[_Module, ast.AST] | None:
        func = call.func
        if isinstance(func, ast.Name):
            if func.id in module.functions:
                return module, module.functions[func.id]
            path, name = module.imports.get(func.id, (None, None))
            if path in modules and name in modules[path].functions:
                return modules[path], modules[path].functions[name]
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
            path, name = module.imports.get(func.value.id, (None, None))
            if name is None and path in modules and func.attr in modules[path].functions:
                return modules[path], modules[path].functions[func.attr]
        return None

    raised: list[Raised] = []
    unseen: list[str] = []
    for path, module in modules.items():
        where = str(path.relative_to(ROOT))
        for call in ast.walk(module.tree):
            if not isinstance(call, ast.Call):
                continue
            first = call.args[0] if call.args else next(
                (keyword.value for keyword in call.keywords if keyword.arg == "reason"), None)
            if _name(call.func) in classes:
                code = classes[_name(call.func)]
                if isinstance(first, ast.Constant) and isinstance(first.value, str):
                    raised.append(Raised(first.value, code, f"{where}:{call.lineno}"))
                elif not (isinstance(first, ast.Name) and first.id == "reason"):
                    unseen.append(f"{where}:{call.lineno}: {ast.unparse(call)[:80]}")
                continue
            target = resolve(module, call)
            if target is None:
                continue
            code = helper_code(*target)
            if code is None:
                continue
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                raised.append(Raised(first.value, code, f"{where}:{call.lineno}"))
            else:
                unseen.append(f"{where}:{call.lineno}: {ast.unparse(call)[:80]}")
    return raised, unseen
