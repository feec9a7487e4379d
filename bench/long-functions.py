#!/usr/bin/env python3
"""List the functions in src/ with more than LIMIT lines of logic (lines that are not
blank and not only a comment), counted from the `fn` line to its closing brace.

    bench/long-functions.py [LIMIT]     (default 80; exit status 1 if any)
"""
import pathlib
import re
import sys

LIMIT = int(sys.argv[1]) if len(sys.argv) > 1 else 80
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?(extern\s+\"C\"\s+)?fn\s+(\w+)")


def strip(line):
    """The line without string literals' braces and without a trailing // comment."""
    line = re.sub(r'"(\\.|[^"\\])*"', '""', line)
    line = re.sub(r"'(\\.|[^'\\])'", "''", line)
    return line.split("//", 1)[0]


def functions(path):
    lines = path.read_text().splitlines()
    i = 0
    while i < len(lines):
        m = FN.match(lines[i])
        if not m:
            i += 1
            continue
        depth, started, logic, j = 0, False, 0, i
        while j < len(lines):
            code = strip(lines[j])
            if code.strip():
                logic += 1
            for ch in code:
                if ch == "{":
                    depth += 1
                    started = True
                elif ch == "}":
                    depth -= 1
            if started and depth == 0:
                break
            if not started and code.rstrip().endswith(";"):
                break  # a declaration without a body
            j += 1
        yield m.group(7), i + 1, logic
        i += 1


found = []
for p in sorted(pathlib.Path("src").rglob("*.rs")):
    for name, line, n in functions(p):
        if n > LIMIT:
            found.append((n, f"{p}:{line}", name))
for n, where, name in sorted(found, reverse=True):
    print(f"{n:4d}  {where}  {name}")
sys.exit(1 if found else 0)
