"""What a benchmark ran on, for its report: CPU model, cores, python and package versions."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
from pathlib import Path


def machine(packages: tuple[str, ...] = ("torch", "transformers", "trl", "peft", "accelerate",
                                         "datasets")) -> dict:
    cpu = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for name in packages:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "versions": versions}


def describe(facts: dict) -> str:
    """One line: 'AMD EPYC ..., 2 cores; python 3.11.7, torch 2.13.0, ...'."""
    versions = ", ".join(f"{name} {version}" for name, version in facts["versions"].items())
    return f"{facts['cpu']}, {facts['cores']} cores; python {facts['python']}, {versions}"
