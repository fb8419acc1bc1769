#!/usr/bin/env python3
"""Writes the values table of charts/vehicle-connect/README.md from the `# --` comments of
values.yaml (helm-docs' convention, without downloading helm-docs), between the
<!-- values:start --> and <!-- values:end --> markers; the rest of the README is prose.

A `# -- text` comment (continued by the `#` lines after it) documents the key below it. A
documented key whose value is a block (a map or list on the following lines) is one row, its
default shown as JSON. Any other leaf without such a comment is an error: every value is
documented. Standard library only, so that it runs wherever python3 does.

    scripts/chart-readme.py           # rewrite the table
    scripts/chart-readme.py --check   # write nothing; fail if the README is out of date
"""
import json
import re
import sys
from pathlib import Path

CHART = Path(__file__).resolve().parent.parent / "charts" / "vehicle-connect"
START, END = "<!-- values:start -->", "<!-- values:end -->"
KEY = re.compile(r"^( *)([A-Za-z0-9_.-]+):(?: +(.*))?$")


def scalar(text):
    """A YAML scalar of values.yaml as the JSON value it means."""
    text = text.strip()
    if text in ("true", "false"):
        return text == "true"
    if text in ("[]", "{}"):
        return [] if text == "[]" else {}
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        return text[1:-1]
    if text.startswith("[") and text.endswith("]"):
        return [scalar(x) for x in text[1:-1].split(",") if x.strip()]
    return text


def block(lines):
    """A block of (indent, text) lines (maps, lists, scalars; no flow styles but [a, b]) as
    the JSON value it means."""
    value, _ = parse_block(lines, 0)
    return value


def parse_block(lines, i):
    indent, text = lines[i]
    if text.startswith("- "):
        items = []
        while i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- "):
            rest = lines[i][1][2:]
            if KEY.match(rest):
                # A map in a list item: its first key sits after the dash.
                sub = [(indent + 2, rest)]
                i += 1
                while i < len(lines) and lines[i][0] > indent:
                    sub.append(lines[i])
                    i += 1
                items.append(parse_block(sub, 0)[0])
            else:
                items.append(scalar(rest))
                i += 1
        return items, i
    out = {}
    while i < len(lines) and lines[i][0] == indent:
        m = KEY.match(" " * indent + lines[i][1])
        if not m:
            raise SystemExit(f"chart-readme: cannot read {lines[i][1]!r}")
        key, rest = m.group(2), m.group(3)
        i += 1
        if rest:
            out[key] = scalar(rest)
        elif i < len(lines) and lines[i][0] > indent or (
            i < len(lines) and lines[i][0] == indent and lines[i][1].startswith("- ")
        ):
            out[key], i = parse_block(lines, i)
        else:
            out[key] = None
    return out, i


def rows(path):
    lines = path.read_text().splitlines()
    stack, out, doc, errors = [], [], None, []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        i += 1
        if not stripped:
            doc = None  # a `# --` comment documents only the key right below it
            continue
        if stripped.startswith("#"):
            body = stripped[1:].strip()
            if body.startswith("--"):
                doc = [body[2:].strip()]
            elif doc is not None:
                doc.append(body)
            continue
        m = KEY.match(line)
        if not m:
            raise SystemExit(f"chart-readme: {path.name}:{i}: cannot read {line!r}")
        indent, key, rest = len(m.group(1)), m.group(2), m.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        name = ".".join([k for _, k in stack] + [key])
        # The lines of this key's block, if it has one: deeper, or a list at its own indent.
        end, sub = i, []
        while end < len(lines):
            text = lines[end].rstrip()
            depth = len(text) - len(text.lstrip())
            if text.strip() and not (depth > indent or text.lstrip().startswith("- ") and depth == indent):
                break
            if text.strip() and not text.lstrip().startswith("#"):
                sub.append((depth, text.strip()))
            end += 1
        if rest:
            value = scalar(rest)
        elif doc is not None:
            value = block(sub) if sub else None
            i = end
        else:
            # An undocumented parent: its keys are documented one by one.
            stack.append((indent, key))
            continue
        if doc is None:
            errors.append(name)
        else:
            out.append((name, value, " ".join(x for x in doc if x)))
        doc = None
    if errors:
        raise SystemExit("chart-readme: values without a `# --` comment: " + ", ".join(errors))
    return out


def table(entries):
    def cell(s):
        # `<fullname>` would be read as an HTML tag and vanish.
        return s.replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")

    lines = ["| Key | Default | Description |", "|-----|---------|-------------|"]
    for name, value, doc in entries:
        default = json.dumps(value, separators=(",", ":"))
        lines.append(f"| `{name}` | `{cell(default)}` | {cell(doc)} |")
    return "\n".join(lines)


def main():
    readme = CHART / "README.md"
    text = readme.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"chart-readme: {readme} lacks the {START} / {END} markers")
    head, rest = text.split(START, 1)
    _, tail = rest.split(END, 1)
    generated = (
        f"{head}{START}\n<!-- generated by scripts/chart-readme.py from values.yaml; "
        f"do not edit -->\n\n{table(rows(CHART / 'values.yaml'))}\n\n{END}{tail}"
    )
    if sys.argv[1:] == ["--check"]:
        if generated != text:
            print(f"[chart-readme] ERROR: {readme} is out of date with values.yaml; "
                  "run scripts/chart-readme.py and commit", file=sys.stderr)
            sys.exit(1)
        print(f"[chart-readme] {readme.name} matches values.yaml", file=sys.stderr)
        return
    readme.write_text(generated)
    print(f"[chart-readme] wrote {readme}", file=sys.stderr)


if __name__ == "__main__":
    main()
