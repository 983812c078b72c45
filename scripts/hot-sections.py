#!/usr/bin/env python3
"""Code sections of dpuctl from its linker map (gold's -Map), for scripts/hot-sections.sh.

  hot-sections.py starts MAP            start address of every code section that can be ordered
  hot-sections.py order MAP HITS        the sections whose starts HITS lists, in that order

A section can be ordered when it is named after its function (`.text.<function>`: Swift with
-function-sections, C with -ffunction-sections). A name several objects share (a local helper every
object that needs it carries, such as Swift's merged metadata accessors `...MaTm`) is listed when any
copy runs: the linker places every section of a listed name, so all copies move, and they are small.
A plain `.text` holds a whole object's functions (the prebuilt Swift runtime and standard library,
libdispatch) and is left where it is.
"""
import re
import sys

SECTION = re.compile(r'^ (\.\S+)\s+0x([0-9a-f]+)\s+0x([0-9a-f]+) (.*)$')
NAME_ONLY = re.compile(r'^ (\.\S+)$')
CONTINUED = re.compile(r'^\s+0x([0-9a-f]+)\s+0x([0-9a-f]+) (.*)$')


def code_sections(path):
    """(name, start) of every non-empty input section laid out in a code output section."""
    found = []
    pending = None
    with open(path, errors='replace') as lines:
        for line in lines:
            match = SECTION.match(line)
            if match:
                name, start, size = match.group(1), int(match.group(2), 16), int(match.group(3), 16)
            else:
                named = NAME_ONLY.match(line)
                if named:
                    pending = named.group(1)
                    continue
                match = CONTINUED.match(line)
                if not (match and pending):
                    pending = None
                    continue
                name, start, size = pending, int(match.group(1), 16), int(match.group(2), 16)
            pending = None
            if size and start and (name == '.text' or name.startswith('.text.')):
                found.append((name, start))
    return found


def orderable(sections):
    return [(name, start) for name, start in sections if name != '.text']


def main():
    mode, path = sys.argv[1], sys.argv[2]
    sections = orderable(code_sections(path))
    if mode == 'starts':
        for _, start in sections:
            print(f'{start:x}')
    elif mode == 'order':
        by_start = {start: name for name, start in sections}
        seen = set()
        with open(sys.argv[3]) as hits:
            for line in hits:
                name = by_start.get(int(line, 16))
                if name is not None and name not in seen:
                    seen.add(name)
                    print(name)
    else:
        sys.exit(f'hot-sections.py: unknown mode {mode}')


if __name__ == '__main__':
    main()
