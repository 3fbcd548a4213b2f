"""The structure numbers of issue 25's measurement, for one source tree (ast only, stdlib only).

    python experiments/code_structure/scan.py                 # the working tree this file is in
    python experiments/code_structure/scan.py --rev 720d5fa   # a commit, via `git archive`
    python experiments/code_structure/scan.py /path/to/tree

Prints: lines of harness/train.py; the modules that import harness.train; functions with a
parameter annotated `DictConfig` and the modules they are in; import cycles among harness modules
(module-level imports alone, and with in-function imports counted as edges too, which is how a
cycle "broken by an import inside a function" shows); in-function imports per 1,000 lines;
the call sites that write summary.json; full-line comments per code line.
"""

from __future__ import annotations

import argparse
import ast
import io
import subprocess
import sys
import tarfile
import tempfile
import tokenize
from collections import defaultdict
from pathlib import Path

PACKAGES = ("harness", "models")  # the trees whose lines and imports are counted


def module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def sources(root: Path) -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            found[module_name(root, path)] = path
    return found


def resolve_import(node: ast.ImportFrom | ast.Import, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The known modules an import statement names (`from a import b` names a.b when that is a module)."""
    targets = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            targets.append(alias.name)
    else:
        base = node.module or ""
        if node.level:
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join([*package, base] if base else package)
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            targets.append(sub if sub in known else base)
    resolved = []
    for target in targets:
        while target and target not in known:
            target = target.rpartition(".")[0]
        if target:
            resolved.append(target)
    return resolved


class ModuleScan(ast.NodeVisitor):
    def __init__(self, module: str, is_package: bool, known: set[str]):
        self.module, self.is_package, self.known = module, is_package, known
        self.depth = 0  # inside a function
        self.top_imports: set[str] = set()
        self.inner_imports: set[str] = set()
        self.inner_import_count = 0
        self.dictconfig_functions: list[str] = []
        self.summary_writes: list[int] = []
        self.scope: list[str] = []

    def visit_FunctionDef(self, node):
        annotations = [a.annotation for a in [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]]
        if any(a is not None and "DictConfig" in ast.unparse(a) for a in annotations):
            self.dictconfig_functions.append(".".join([*self.scope, node.name]))
        self.depth += 1
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self.scope.append(node.name)
        self.generic_visit(node)
        self.scope.pop()

    def _import(self, node):
        if self.depth:
            self.inner_import_count += 1
        targets = set(resolve_import(node, self.module, self.is_package, self.known)) - {self.module}
        (self.inner_imports if self.depth else self.top_imports).update(targets)

    def visit_Import(self, node):
        self._import(node)

    def visit_ImportFrom(self, node):
        self._import(node)

    def visit_Call(self, node):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        text = ast.unparse(node)
        # The file is written by RunDir.write_summary (a method call on a run directory) or by a
        # direct write to its path; a module-level helper that wraps those is counted where it calls them.
        if (isinstance(func, ast.Attribute) and name == "write_summary") or (
            name in ("atomic_write_json", "write_text", "dump") and ("summary_path" in text or "summary.json" in text)
        ):
            self.summary_writes.append(node.lineno)
        self.generic_visit(node)


def comment_and_code_lines(path: Path) -> tuple[int, int, int]:
    """(full-line comments, code lines, all lines); a docstring's lines count as code."""
    text = path.read_text()
    comment_lines, code_lines = set(), set()
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type == tokenize.COMMENT:
            line = token.line.strip()
            if line.startswith("#"):
                comment_lines.add(token.start[0])
        elif token.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENDMARKER):
            code_lines.update(range(token.start[0], token.end[0] + 1))
    return len(comment_lines), len(code_lines - comment_lines), len(text.splitlines())


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found, counter = {}, {}, [], set(), [], [0]

    def strongconnect(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    sys.setrecursionlimit(10_000)
    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return sorted(found)


def two_module_cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    return sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if a in graph.get(b, ())})


def scan(root: Path) -> str:
    files = sources(root)
    known = set(files)
    scans = {}
    for module, path in files.items():
        visitor = ModuleScan(module, path.name == "__init__.py", known)
        visitor.visit(ast.parse(path.read_text(), str(path)))
        scans[module] = visitor
    harness = {m for m in files if m == "harness" or m.startswith("harness.")}

    # A package's import of its submodule is how Python loads it, not a dependency cycle.
    def edges(inner: bool) -> dict[str, set[str]]:
        graph = defaultdict(set)
        for m in harness:
            targets = scans[m].top_imports | (scans[m].inner_imports if inner else set())
            graph[m] = {t for t in targets if t in harness and not t.startswith(m + ".") and not m.startswith(t + ".")}
        return graph

    out = []
    train = root / "harness" / "train.py"
    out.append(f"harness/train.py lines: {len(train.read_text().splitlines()) if train.exists() else 0}")
    importers = sorted(
        m for m, s in scans.items() if m != "harness.train" and "harness.train" in s.top_imports | s.inner_imports
    )
    out.append(f"modules importing harness.train: {len(importers)} {importers}")

    dc = {m: s.dictconfig_functions for m, s in scans.items() if s.dictconfig_functions}
    out.append(f"functions with a DictConfig-annotated parameter: {sum(map(len, dc.values()))} in {len(dc)} modules")
    for m in sorted(dc):
        out.append(f"  {m}: {len(dc[m])} ({', '.join(dc[m])})")

    for label, inner in (("module-level imports", False), ("module-level + in-function imports", True)):
        graph = edges(inner)
        components = cycles(graph)
        pairs = two_module_cycles(graph)
        out.append(f"import cycles among harness modules, {label}: {len(components)} strongly connected groups")
        for component in components:
            out.append(f"  {' <-> '.join(component)}")
        out.append(f"  two-module cycles: {len(pairs)} {[' <-> '.join(p) for p in pairs]}")

    for label, modules in (("harness/", harness), ("harness/ + models/", set(files))):
        inner = sum(scans[m].inner_import_count for m in modules)
        lines = sum(len(files[m].read_text().splitlines()) for m in modules)
        code = sum(comment_and_code_lines(files[m])[1] for m in modules)
        out.append(
            f"in-function imports, {label}: {inner} = {1000 * inner / lines:.1f} per 1,000 lines "
            f"({lines} lines), {1000 * inner / code:.1f} per 1,000 code lines ({code})"
        )
    per_module = sorted(
        ((scans[m].inner_import_count, m) for m in harness if scans[m].inner_import_count), reverse=True
    )
    out.append("  by module: " + ", ".join(f"{m} {n}" for n, m in per_module))

    writers = [f"{files[m].relative_to(root)}:{line}" for m in sorted(scans) for line in scans[m].summary_writes]
    out.append(f"summary.json write call sites: {len(writers)}")
    out.extend(f"  {w}" for w in writers)

    for label, modules in (("harness/", harness), ("harness/ + models/", set(files))):
        comments = code = 0
        for m in modules:
            c, k, _ = comment_and_code_lines(files[m])
            comments, code = comments + c, code + k
        out.append(f"full-line comments per code line, {label}: {comments}/{code} = {comments / code:.3f}")
    return "\n".join(out)


def tree_at(rev: str, into: Path) -> Path:
    archive = subprocess.run(["git", "archive", rev, *PACKAGES], check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(into, filter="data")
    return into


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=Path(__file__).resolve().parents[2])
    parser.add_argument("--rev", help="scan this git commit instead (git archive of harness/ and models/)")
    args = parser.parse_args()
    if args.rev:
        with tempfile.TemporaryDirectory() as tmp:
            print(f"tree: {args.rev}")
            print(scan(tree_at(args.rev, Path(tmp))))
    else:
        print(f"tree: {args.root}")
        print(scan(args.root))


if __name__ == "__main__":
    main()
