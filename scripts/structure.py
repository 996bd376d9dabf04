#!/usr/bin/env python3
"""The shape of the source tree, by the yardsticks of the redesign: module sizes, the longest
functions, import circles (files and folders), `too_many_arguments` allows, and the public
API as rustdoc lists it.

    scripts/structure.py [SRC_DIR] [--api]      (default src/; --api runs `cargo doc`)

Imports are read as text: `use crate::a::b`, `crate::a::b::f(...)` paths and `use super::x`
in a file are arrows to the file that defines that module. A circle is a strongly connected
set of two or more files (or folders); with none, every import looks down some order.
"""
import os
import re
import subprocess
import sys
from collections import defaultdict


def rust_files(src):
    out = []
    for root, _, files in os.walk(src):
        for f in files:
            if f.endswith(".rs"):
                out.append(os.path.relpath(os.path.join(root, f), src))
    return sorted(out)


def module_of(path):
    """src-relative file -> module path (list of names)."""
    p = path[:-3].split(os.sep)
    if p[-1] in ("mod", "lib", "main"):
        p = p[:-1]
    return p


def strip_tests(text):
    """Drops `#[cfg(test)] mod tests { ... }` blocks (their imports are not the module's)."""
    out, skip, depth = [], False, 0
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        if not skip and line.strip() == "#[cfg(test)]" and i + 1 < len(lines) and re.match(r"\s*(pub(\(\w+\))? )?mod \w+ \{", lines[i + 1]):
            skip, depth = True, 0
        if skip:
            depth += line.count("{") - line.count("}")
            if depth <= 0 and "}" in line and i > 0:
                skip = False
            i += 1
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def resolve(modules, base, parts):
    """The longest module path in `modules` that prefixes base+parts."""
    full = base + parts
    for n in range(len(full), 0, -1):
        key = tuple(full[:n])
        if key in modules:
            return modules[key]
    return None


def imports(src, files):
    modules = {tuple(module_of(f)): f for f in files}
    edges = defaultdict(set)
    for f in files:
        text = strip_tests(open(os.path.join(src, f), encoding="utf-8").read())
        # Comments (doc links included) are not imports.
        text = "\n".join(line.split("//")[0] for line in text.split("\n"))
        me = module_of(f)
        # `super` is the parent module of this file's module (for mod.rs: of its folder).
        parent = me[:-1]
        for m in re.finditer(r"\bcrate((?:::\w+)+)", text):
            t = resolve(modules, [], m.group(1).strip(":").split("::"))
            if t and t != f:
                edges[f].add(t)
        for m in re.finditer(r"\bsuper((?:::\w+)+)", text):
            names = m.group(1).strip(":").split("::")
            base = parent
            while names and names[0] == "super":
                base, names = base[:-1], names[1:]
            t = resolve(modules, base, names)
            if t and t != f:
                edges[f].add(t)
        for m in re.finditer(r"use super::\{([^}]*)\}", text):
            for name in re.findall(r"\b(\w+)\b", m.group(1)):
                t = modules.get(tuple(parent + [name]))
                if t and t != f:
                    edges[f].add(t)
    return edges


def sccs(nodes, edges):
    index, low, on, stack, out, n = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = n[0]
        n[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
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

    sys.setrecursionlimit(10000)
    for v in nodes:
        if v not in index:
            visit(v)
    return out


def functions(src, files):
    res = []
    for f in files:
        lines = open(os.path.join(src, f), encoding="utf-8").read().split("\n")
        for i, l in enumerate(lines):
            m = re.match(r"^(\s*)(pub(\([a-z]+\))? )?(const )?(unsafe )?fn (\w+)", l)
            if m and not l.rstrip().endswith(";"):
                ind = m.group(1)
                for j in range(i + 1, len(lines)):
                    if lines[j] == ind + "}":
                        res.append((j - i + 1, f, m.group(6)))
                        break
    return sorted(res, reverse=True)


def api(root):
    subprocess.run(["cargo", "doc", "--no-deps", "--lib", "--quiet"], cwd=root, check=True)
    meta = subprocess.run(
        ["cargo", "metadata", "--format-version", "1", "--no-deps"], cwd=root, check=True, capture_output=True, text=True
    ).stdout
    target = re.search(r'"target_directory":"([^"]+)"', meta).group(1)
    html = open(os.path.join(target, "doc", "loraweld", "all.html"), encoding="utf-8").read()
    return {
        kind: len(re.findall(r"<li>", items))
        for kind, items in re.findall(r'<h3 id="([a-z-]+)">[^<]*</h3><ul class="all-items">(.*?)</ul>', html)
    }


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    src = args[0] if args else "src"
    files = rust_files(src)
    sizes = {f: sum(1 for _ in open(os.path.join(src, f), encoding="utf-8")) for f in files}
    total = sum(sizes.values())
    print(f"files: {len(files)}, lines: {total}")
    print("largest files:")
    for f, n in sorted(sizes.items(), key=lambda x: -x[1])[:8]:
        print(f"  {n:5d}  {f}")
    folders = defaultdict(int)
    for f, n in sizes.items():
        folders[f.split(os.sep)[0] if os.sep in f else f] += n
    print("largest top-level modules (files or folders):")
    for f, n in sorted(folders.items(), key=lambda x: -x[1])[:8]:
        print(f"  {n:5d}  {f}")
    print("longest functions:")
    for n, f, name in functions(src, files)[:8]:
        print(f"  {n:4d}  {f}: {name}")
    edges = imports(src, files)
    file_circles = sccs(files, edges)
    print(f"import circles between files: {len(file_circles)}")
    for c in file_circles:
        print("  " + " <-> ".join(c))
    folder = lambda f: os.path.dirname(f) or f
    fedges = defaultdict(set)
    for a, bs in edges.items():
        for b in bs:
            if folder(a) != folder(b):
                fedges[folder(a)].add(folder(b))
    folder_circles = sccs(sorted({folder(f) for f in files}), fedges)
    print(f"import circles between folders: {len(folder_circles)}")
    for c in folder_circles:
        print("  " + " <-> ".join(c))
    allows = sum(open(os.path.join(src, f), encoding="utf-8").read().count("clippy::too_many_arguments") for f in files)
    print(f"too_many_arguments allows: {allows}")
    if "--api" in sys.argv:
        root = os.path.dirname(os.path.abspath(src))
        print("public API (rustdoc, default features): " + ", ".join(f"{n} {k}" for k, n in api(root).items()))


if __name__ == "__main__":
    main()
