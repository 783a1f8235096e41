#!/usr/bin/env python3
"""Checks the shape of gateway/src that the compiler does not: run by `make lint`.

1. Layering: reads every `crate::...` path (in `use` lines and inline) and `super::` path of
   each module and fails on any import cycle, between top-level modules (`wire` -> `frontdoor`
   -> `wire`) and between the files of one folder (`plugin/engine.rs` -> `plugin/host.rs` ->
   `plugin/engine.rs`). Every arrow must point down; the layers are drawn in ARCHITECTURE.md.
   Modules listed in BOTTOM may import nothing from the crate but each other as listed.
2. Function length: no function outside tests is longer than MAX_FN_LINES lines.

  scripts/check-architecture.py            check, exit 1 on a problem
  scripts/check-architecture.py --graph    print the module graph (top level) and exit
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "gateway" / "src"
MAX_FN_LINES = 80
# The bottom layers and what each may import from the crate.
BOTTOM = {
    "protocol": set(),
    "config": {"protocol"},
}

PATH_RE = re.compile(r"\b(crate|super)((?:::[A-Za-z_][A-Za-z0-9_]*)+|::\{)")
USE_GROUP_RE = re.compile(r"use\s+(crate|super)::\{([^;]*)\};", re.S)
FN_RE = re.compile(r"^(\s*)(?:pub(?:\([^)]*\))?\s+)?(?:const\s+)?(?:async\s+)?(?:unsafe\s+)?"
                   r"(?:extern\s+\"[^\"]*\"\s+)?fn\s+([A-Za-z_][A-Za-z0-9_]*)")


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return "\n".join(line.split("//", 1)[0] for line in text.splitlines())


def strip_tests(text: str) -> str:
    """Drops `#[cfg(test)] mod ... { ... }` blocks (tests may import anything)."""
    out, lines, i = [], text.splitlines(), 0
    while i < len(lines):
        if lines[i].strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub\s+)?mod\s+\w+\s*\{", lines[i + 1]):
            depth, i = 0, i + 1
            while i < len(lines):
                depth += lines[i].count("{") - lines[i].count("}")
                i += 1
                if depth <= 0:
                    break
            continue
        out.append(lines[i])
        i += 1
    return "\n".join(out)


def module_of(path: Path) -> list[str]:
    """`gateway/src/plugin/host.rs` -> ["plugin", "host"]; `proxy.rs` -> ["proxy"]."""
    parts = list(path.relative_to(SRC).with_suffix("").parts)
    if parts[-1] == "mod":
        parts.pop()
    return parts


def imports(path: Path) -> set[tuple[str, ...]]:
    """Module paths (absolute, within the crate) that the file refers to."""
    text = strip_tests(strip_comments(path.read_text()))
    me = module_of(path)
    # A `mod.rs` or a top-level file is its own module: `super` is its parent.
    here = me
    found: set[tuple[str, ...]] = set()

    def resolve(root: str, segs: list[str]) -> tuple[str, ...] | None:
        if root == "crate":
            return tuple(segs)
        base = here[:-1]
        while segs and segs[0] == "super":
            segs = segs[1:]
            base = base[:-1]
        return tuple(base + segs)

    for m in USE_GROUP_RE.finditer(text):
        root, body = m.group(1), m.group(2)
        for item in re.split(r",(?![^{]*\})", body):
            head = item.strip().split("::")[0].strip("{} \n")
            if head and head not in ("self",):
                r = resolve(root, [head])
                if r:
                    found.add(r)
    for m in PATH_RE.finditer(text):
        root, rest = m.group(1), m.group(2)
        segs = [s for s in rest.split("::") if s and s != "{"]
        if not segs:
            continue
        r = resolve(root, segs)
        if r:
            found.add(r)
    return found


def files() -> list[Path]:
    return sorted(p for p in SRC.rglob("*.rs"))


def known_modules() -> set[tuple[str, ...]]:
    return {tuple(module_of(p)) for p in files()}


def graph_at(prefix: tuple[str, ...]) -> dict[str, set[str]]:
    """Edges between the modules directly under `prefix` (the crate root for ())."""
    mods = known_modules()
    children = {m[len(prefix)] for m in mods if len(m) > len(prefix) and m[:len(prefix)] == prefix}
    edges: dict[str, set[str]] = {c: set() for c in children}
    for p in files():
        me = tuple(module_of(p))
        if len(me) <= len(prefix) or me[:len(prefix)] != prefix:
            continue
        src = me[len(prefix)]
        for target in imports(p):
            if len(target) <= len(prefix) or target[:len(prefix)] != prefix:
                continue
            dst = target[len(prefix)]
            if dst in children and dst != src:
                edges[src].add(dst)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def long_functions() -> list[str]:
    problems = []
    for p in files():
        lines = strip_tests(strip_comments(p.read_text())).splitlines()
        i = 0
        while i < len(lines):
            m = FN_RE.match(lines[i])
            if not m:
                i += 1
                continue
            # Find the body's opening brace, then its matching close.
            start, depth, opened, j = i, 0, False, i
            while j < len(lines):
                line = lines[j]
                if not opened and line.rstrip().endswith(";") and "{" not in line:
                    break  # a declaration without a body
                depth += line.count("{") - line.count("}")
                opened = opened or "{" in line
                if opened and depth <= 0:
                    break
                j += 1
            length = j - start + 1
            if opened and length > MAX_FN_LINES:
                problems.append(f"{p.relative_to(ROOT)}:{start + 1}: fn {m.group(2)} is {length} lines (at most {MAX_FN_LINES})")
            i = start + 1
    return problems


def main() -> int:
    top = graph_at(())
    if "--graph" in sys.argv:
        for m in sorted(top):
            print(f"{m} -> {', '.join(sorted(top[m])) or '(nothing)'}")
        return 0
    problems = []
    for comp in cycles(top):
        problems.append("import cycle among gateway/src modules: " + " <-> ".join(comp))
    for folder in sorted({m[:-1] for m in known_modules() if len(m) > 1}):
        for comp in cycles(graph_at(folder)):
            problems.append(f"import cycle inside {'/'.join(folder)}/: " + " <-> ".join(comp))
    for module, allowed in BOTTOM.items():
        extra = top.get(module, set()) - allowed
        if module in top and extra:
            problems.append(f"{module} is a bottom layer but imports {', '.join(sorted(extra))}")
    problems += long_functions()
    for p in problems:
        print(p)
    if problems:
        print(f"{len(problems)} architecture problem(s); see ARCHITECTURE.md", file=sys.stderr)
        return 1
    print("architecture: no import cycle, functions within bounds")
    return 0


if __name__ == "__main__":
    sys.exit(main())
