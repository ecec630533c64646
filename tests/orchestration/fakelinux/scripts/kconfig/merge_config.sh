#!/usr/bin/env python3
"""Fake merge_config.sh -m -O DIR BASE FRAGMENT...: later values win."""
import re
import sys

args = sys.argv[1:]
assert args[0] == "-m" and args[1] == "-O", args
out, base, frags = args[2], args[3], args[4:]
values = {}
for path in [base, *frags]:
    for line in open(path):
        line = line.strip()
        m = re.match(r"CONFIG_(\w+)=(.*)", line) or re.match(r"# CONFIG_(\w+) is not set", line)
        if m:
            values[m.group(1)] = m.group(2) if "=" in line else "n"
with open(f"{out}/.config", "w") as f:
    for name, value in sorted(values.items()):
        f.write(f"CONFIG_{name}={value}\n" if value != "n" else f"# CONFIG_{name} is not set\n")
