"""Shared helpers for experiment scripts: machine description, JSON output, tables."""

import json
import os
import platform
from pathlib import Path

import jax


def cpu_description():
    """Names this machine's CPU and usable cores, e.g. ``"cpu: Intel Xeon x 2 cores"``."""
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return f"cpu: {model} x {cores} cores"


def device_description():
    """Names the device the default JAX backend runs on (the CPU model on CPU)."""
    device = jax.devices()[0]
    if device.platform == "cpu":
        return cpu_description()
    return f"{device.platform}: {device.device_kind}"


def pyplot():
    """``matplotlib.pyplot`` on the non-interactive Agg backend, imported only when plotting."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, title):
    """Titles, lays out, writes (PNG at 100 dpi) and closes a figure."""
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    pyplot().close(fig)


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
