"""Sorts the map entries of a `mesh config-dump --raw` dump (protobuf maps print in hash
order), so that two dumps of the same resources compare equal line by line."""
import sys


def blocks(lines, indent):
    """Splits lines at `indent` into entries: a first line and the lines nested under it."""
    out, cur = [], None
    for line in lines:
        depth = len(line) - len(line.lstrip(" "))
        if depth == indent and cur is not None and not line.strip().startswith(("}", "]", ")")):
            out.append(cur)
            cur = [line]
        elif cur is None:
            cur = [line]
        else:
            cur.append(line)
    if cur:
        out.append(cur)
    return out


def normalize(lines):
    out, i = [], 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        if not line.rstrip().endswith("{"):
            continue
        depth = len(line) - len(line.lstrip(" "))
        j = i
        while j < len(lines) and (len(lines[j]) - len(lines[j].lstrip(" ")) > depth):
            j += 1
        inner = lines[i:j]
        if inner and inner[0].strip().startswith('"'):
            entries = blocks(inner, depth + 4)
            entries = [normalize(e) for e in entries]
            entries.sort(key=lambda e: e[0])
            for e in entries:
                out.extend(e)
        else:
            out.extend(normalize(inner))
        i = j
    return out


print("\n".join(normalize(sys.stdin.read().splitlines())))
