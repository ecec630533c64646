#!/usr/bin/env python3
"""Fake olddefconfig: drop options whose 'depends on' is not =y, and options only another arch's
arch/*/Kconfig defines (like Kconfig, which never sees them)."""
import glob
import os
import re
import sys

*kconfigs, config = sys.argv[1:]
deps = {}
current = None
kconfig_lines = []
for path in kconfigs:
    if os.path.exists(path):
        with open(path) as f:
            kconfig_lines += f.readlines()
foreign = set()
for path in glob.glob("arch/*/Kconfig"):
    if path not in kconfigs:
        with open(path) as f:
            foreign |= {m.group(1) for m in re.finditer(r"^config (\w+)", f.read(), re.M)}
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
for name in foreign:
    values.pop(name, None)
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
