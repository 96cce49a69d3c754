"""Shared helpers for experiment scripts: machine description, JSON output, tables."""

import json
import os
import platform
from pathlib import Path

import jax


def device_description():
    """Names the device the default JAX backend runs on, e.g. ``"cpu: Intel Xeon x 2 cores"``."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        model = platform.processor() or "unknown CPU"
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
        except OSError:
            pass
        return f"cpu: {model} x {os.cpu_count()} cores"
    return f"{device.platform}: {device.device_kind}"


def write_json(path, payload):
    """Writes ``payload`` as indented JSON, creating parent folders."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n")


def markdown_table(header, rows):
    """Formats rows (sequences of cells) as a GitHub markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
