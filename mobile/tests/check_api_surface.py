#!/usr/bin/env python3
"""Checks that the generated Swift and Kotlin bindings expose the API the Rust crate exports.

There is no Swift compiler here, so the Swift file is checked by reading it: every exported
object method and constructor (with its parameter names and whether it is async), every
callback-interface method, record field, enum variant and error variant of the Rust crate
(read from mobile/src, the `#[uniffi::export]` blocks and `uniffi::Record/Enum/Error`
derives) must appear in both generated files, and neither may expose more. Names are
compared in snake_case (Kotlin and Swift spell them lowerCamelCase, Kotlin enum variants
SCREAMING_SNAKE_CASE, Kotlin errors `...Exception`).

  check_api_surface.py --rust mobile/src --kotlin DIR_OR_FILE --swift FILE
Exits 1 and lists the differences when the surfaces differ.
"""

import argparse
import pathlib
import re
import sys


def snake(name):
    """`baselineM2`, `BaselineM2`, `BASELINE_M2`, `baseline_m2` -> `baseline_m2`."""
    name = name.strip("`")
    if name.isupper() or "_" in name:
        return name.lower()
    out = re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
    return out


def block(text, start):
    """The text of the `{...}` block whose `{` is the first one at or after `start`."""
    open_at = text.index("{", start)
    depth = 0
    for i in range(open_at, len(text)):
        if text[i] == "{":
            depth += 1
        elif text[i] == "}":
            depth -= 1
            if depth == 0:
                return text[open_at + 1:i]
    raise ValueError("unbalanced braces")


def top_level(body):
    """The parts of a block body at brace depth 0 (drops nested blocks, e.g. fn bodies)."""
    out, depth = [], 0
    for ch in body:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def params(sig):
    """Parameter names of a signature's `(...)` text, `self` left out."""
    depth, cur, parts = 0, [], []
    for ch in sig:
        if ch in "(<[":
            depth += 1
        elif ch in ")>]":
            depth -= 1
        if ch == "," and depth == 0:
            parts.append("".join(cur))
            cur = []
        else:
            cur.append(ch)
    parts.append("".join(cur))
    names = []
    for p in parts:
        p = re.sub(r"/\*.*?\*/", "", p, flags=re.S)
        p = re.sub(r"//[^\n]*", "", p).strip()
        if not p or p in ("&self", "self", "&mut self"):
            continue
        names.append(snake(p.split(":")[0].split()[-1]))
    return tuple(names)


def signature_args(text, open_paren):
    """The text between the `(` at `open_paren` and its matching `)`."""
    depth = 0
    for i in range(open_paren, len(text)):
        if text[i] == "(":
            depth += 1
        elif text[i] == ")":
            depth -= 1
            if depth == 0:
                return text[open_paren + 1:i]
    raise ValueError("unbalanced parentheses")


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


# --- Rust -------------------------------------------------------------------------------

def rust_surface(src):
    text = "\n".join(p.read_text() for p in sorted(pathlib.Path(src).glob("**/*.rs")))
    text = strip_comments(text)
    surface = set()
    # Exported impl blocks of objects.
    for m in re.finditer(r"#\[uniffi::export\]\s*impl\s+(\w+)\s*\{", text):
        obj = m.group(1)
        body = top_level(block(text, m.end() - 1))
        for f in re.finditer(r"(#\[uniffi::constructor\]\s*)?pub\s+(async\s+)?fn\s+(\w+)\s*\(", body):
            args = params(signature_args(body, f.end() - 1))
            kind = "constructor" if f.group(1) else ("async" if f.group(2) else "sync")
            surface.add(f"method {obj}.{f.group(3)}{args} {kind}")
    # Callback interfaces.
    for m in re.finditer(r"#\[uniffi::export\(with_foreign\)\]\s*pub\s+trait\s+(\w+)[^{]*\{", text):
        body = block(text, m.end() - 1)
        for f in re.finditer(r"fn\s+(\w+)\s*\(", body):
            surface.add(f"callback {m.group(1)}.{f.group(1)}{params(signature_args(body, f.end() - 1))}")
    # Records, enums, errors.
    for m in re.finditer(r"#\[derive\(([^)]*)\)\]\s*(?:#\[[^\]]*\]\s*)*pub\s+(struct|enum)\s+(\w+)", text):
        derives, kind, name = m.group(1), m.group(2), m.group(3)
        body = block(text, m.end())
        if "uniffi::Record" in derives:
            for f in re.finditer(r"(?:#\[[^\]]*\]\s*)*pub\s+(\w+)\s*:", body):
                surface.add(f"field {name}.{f.group(1)}")
            surface.add(f"record {name}")
        elif "uniffi::Enum" in derives:
            surface.add(f"enum {name}")
            for v in re.findall(r"^\s*(\w+)\s*,?\s*$", top_level(body), flags=re.M):
                surface.add(f"variant {name}.{snake(v)}")
        elif "uniffi::Error" in derives:
            surface.add(f"error {name}")
            for v in re.finditer(r"(?:#\[[^\]]*\]\s*)*(\w+)\s*\{", body):
                surface.add(f"error-variant {name}.{v.group(1)}")
                for f in re.finditer(r"(\w+)\s*:", block(body, v.end() - 1)):
                    surface.add(f"error-field {name}.{v.group(1)}.{f.group(1)}")
    # Enums declared through `mirror_enum!` (types.rs).
    for m in re.finditer(r"mirror_enum!\s*\{\s*(?:#\[[^\]]*\]\s*)*(\w+)\s*=>\s*[\w:]+\s*\{", text):
        surface.add(f"enum {m.group(1)}")
        for v in re.findall(r"(\w+)\s*,?", strip_comments(block(text, m.end() - 1))):
            surface.add(f"variant {m.group(1)}.{snake(v)}")
    return surface


# --- Kotlin -----------------------------------------------------------------------------

def kotlin_surface(path):
    p = pathlib.Path(path)
    files = sorted(p.glob("**/*.kt")) if p.is_dir() else [p]
    text = strip_comments("\n".join(f.read_text() for f in files))
    surface = set()
    for m in re.finditer(r"public interface (\w+)Interface\s*\{", text):
        obj = m.group(1)
        body = block(text, m.end() - 1)
        for f in re.finditer(r"(suspend\s+)?fun\s+`?(\w+)`?\s*\(", body):
            kind = "async" if f.group(1) else "sync"
            surface.add(f"method {obj}.{snake(f.group(2))}{params(signature_args(body, f.end() - 1))} {kind}")
        cls = re.search(r"open class " + obj + r"\b", text)
        companion = re.search(r"companion object\s*\{", text[cls.end():])
        cbody = top_level(block(text, cls.end() + companion.end() - 1))
        for f in re.finditer(r"fun\s+`?(\w+)`?\s*\(", cbody):
            surface.add(f"method {obj}.{snake(f.group(1))}{params(signature_args(cbody, f.end() - 1))} constructor")
    callbacks = {m.group(1) for m in re.finditer(r"open class (\w+)Impl\s*:", text)}
    for name in callbacks:
        m = re.search(r"public interface " + name + r"\s*\{", text)
        body = top_level(block(text, m.end() - 1))
        for f in re.finditer(r"fun\s+`?(\w+)`?\s*\(", body):
            surface.add(f"callback {name}.{snake(f.group(1))}{params(signature_args(body, f.end() - 1))}")
    for m in re.finditer(r"^data class (\w+)\s*\(", text, flags=re.M):
        surface.add(f"record {m.group(1)}")
        for f in re.finditer(r"va[rl]\s+`?(\w+)`?\s*:", signature_args(text, m.end() - 1)):
            surface.add(f"field {m.group(1)}.{snake(f.group(1))}")
    for m in re.finditer(r"^enum class (\w+)\s*\{", text, flags=re.M):
        surface.add(f"enum {m.group(1)}")
        body = block(text, m.end() - 1).split(";")[0]
        for v in re.findall(r"\b([A-Z][A-Z0-9_]*)\b", body):
            surface.add(f"variant {m.group(1)}.{snake(v)}")
    for m in re.finditer(r"^sealed class (\w+)Exception\s*:", text, flags=re.M):
        name = m.group(1) + "Error"
        surface.add(f"error {name}")
        body = block(text, m.end())
        for v in re.finditer(r"class\s+(\w+)\s*\(", body):
            if v.group(1) == "ErrorHandler":
                continue
            surface.add(f"error-variant {name}.{v.group(1)}")
            for f in re.finditer(r"val\s+`?(\w+)`?\s*:", signature_args(body, v.end() - 1)):
                surface.add(f"error-field {name}.{v.group(1)}.{snake(f.group(1))}")
    return surface


# --- Swift ------------------------------------------------------------------------------

def swift_surface(path):
    text = strip_comments(pathlib.Path(path).read_text())
    surface = set()
    for m in re.finditer(r"public protocol (\w+)Protocol\s*:[^{]*\{", text):
        obj = m.group(1)
        body = block(text, m.end() - 1)
        for f in re.finditer(r"func\s+`?(\w+)`?\s*\(", body):
            args = signature_args(body, f.end() - 1)
            rest = body[f.end() - 1 + len(args) + 2:].split("\n")[0]
            kind = "async" if re.search(r"\basync\b", rest) else "sync"
            surface.add(f"method {obj}.{snake(f.group(1))}{params(args)} {kind}")
        cls = re.search(r"open class " + obj + r"\s*:[^{]*\{", text)
        cbody = top_level(block(text, cls.end() - 1))
        for f in re.finditer(r"public static func\s+`?(\w+)`?\s*\(", cbody):
            surface.add(f"method {obj}.{snake(f.group(1))}{params(signature_args(cbody, f.end() - 1))} constructor")
    callbacks = {m.group(1) for m in re.finditer(r"open class (\w+)Impl\s*:", text)}
    for name in callbacks:
        m = re.search(r"public protocol " + name + r"\s*:[^{]*\{", text)
        body = block(text, m.end() - 1)
        for f in re.finditer(r"func\s+`?(\w+)`?\s*\(", body):
            surface.add(f"callback {name}.{snake(f.group(1))}{params(signature_args(body, f.end() - 1))}")
    for m in re.finditer(r"^public struct (\w+)\s*:\s*Equatable[^{]*\{", text, flags=re.M):
        surface.add(f"record {m.group(1)}")
        for f in re.finditer(r"public var\s+`?(\w+)`?\s*:", top_level(block(text, m.end() - 1))):
            surface.add(f"field {m.group(1)}.{snake(f.group(1))}")
    for m in re.finditer(r"^public\s+enum (\w+)\s*:\s*([^{]*)\{", text, flags=re.M):
        name, conforms = m.group(1), m.group(2)
        body = block(text, m.end() - 1)
        if "Error" in conforms:
            surface.add(f"error {name}")
            for v in re.finditer(r"case\s+(\w+)\s*\(", body):
                surface.add(f"error-variant {name}.{v.group(1)}")
                for f in re.finditer(r"(\w+)\s*:", signature_args(body, v.end() - 1)):
                    surface.add(f"error-field {name}.{v.group(1)}.{snake(f.group(1))}")
        else:
            surface.add(f"enum {name}")
            for v in re.findall(r"case\s+`?(\w+)`?", top_level(body)):
                surface.add(f"variant {name}.{snake(v)}")
    return surface


def compare(label, want, have):
    missing, extra = sorted(want - have), sorted(have - want)
    for item in missing:
        print(f"{label}: missing  {item}")
    for item in extra:
        print(f"{label}: extra    {item}")
    return not missing and not extra


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rust", required=True)
    ap.add_argument("--kotlin", required=True)
    ap.add_argument("--swift", required=True)
    a = ap.parse_args()
    rust = rust_surface(a.rust)
    methods = sum(1 for s in rust if s.startswith(("method ", "callback ")))
    if methods < 10 or not any(s.startswith("error ") for s in rust):
        print(f"the Rust surface looks wrong ({len(rust)} items): the parser needs fixing")
        return 1
    ok = compare("kotlin", rust, kotlin_surface(a.kotlin))
    ok = compare("swift", rust, swift_surface(a.swift)) and ok
    kinds = {}
    for s in rust:
        kinds[s.split()[0]] = kinds.get(s.split()[0], 0) + 1
    summary = ", ".join(f"{n} {k}" for k, n in sorted(kinds.items()))
    print(f"API surface ({summary}): " + ("Kotlin and Swift match the Rust crate" if ok else "MISMATCH"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
