"""Where a benchmark result comes from: the commit, the date and the machine, recorded inside its JSON.

Every script in benchmarks/ adds `"provenance": provenance()` to the JSON it writes (with `write_result`), so a
result file says which code produced it without a commit in its name (docs/benchmarks.md reads the tables from
these files).
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def git_commit(root: Path = ROOT) -> str:
    """The full hash of the checkout's HEAD, with "+changes" when tracked files other than the results differ
    from it (the code that ran is then not exactly that commit's); "unknown" outside a git checkout or without
    git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()
        changed = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)benchmarks/results"],
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+changes" if changed else commit


def machine() -> dict:
    """The platform, the CPU count, the torch version and the GPU's name (None without one)."""
    description = {"platform": platform.platform(), "cpus": os.cpu_count(), "torch": None, "gpu": None}
    try:
        import torch
    except ImportError:
        return description
    description["torch"] = torch.__version__
    if torch.cuda.is_available():
        description["gpu"] = torch.cuda.get_device_name(0)
    return description


def provenance() -> dict:
    """{"commit", "date" (UTC, ISO 8601), "machine"} for a result written now."""
    return {
        "commit": git_commit(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
    }


def write_result(output: str | os.PathLike, result: dict | list) -> Path:
    """Write a benchmark's result as indented JSON to `output` (its folder made if missing) and say so."""
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2))
    print(f"Wrote {path}")
    return path
