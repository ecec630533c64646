#!/usr/bin/env python3
"""Fake olddefconfig: drop options whose 'depends on' is not =y (like Kconfig)."""
import re
import sys

kconfig, config = sys.argv[1], sys.argv[2]
deps = {}
current = None
with open(kconfig) as f:
    kconfig_lines = f.readlines()
with open(config) as f:
    config_lines = f.readlines()
for line in kconfig_lines:
    m = re.match(r"config (\w+)", line)
    if m:
        current = m.group(1)
    m = re.match(r"\s+depends on (\w+)", line)
    if m and current:
        deps[current] = m.group(1)
values = {}
for line in config_lines:
    m = re.match(r"CONFIG_(\w+)=(.*)", line.strip())
    if m:
        values[m.group(1)] = m.group(2)
changed = True
while changed:
    changed = False
    for name, dep in deps.items():
        if name in values and values.get(dep) != "y":
            del values[name]
            changed = True
with open(config, "w") as f:
    for name, value in sorted(values.items()):
        f.write(f"CONFIG_{name}={value}\n")
