"""How long `import liaf_hf` takes in a fresh interpreter, and what it loads.

    python benchmarks/import_time.py                              # this checkout
    python benchmarks/import_time.py --compare /path/to/other/src # and another version's src folder, interleaved

Each round starts one interpreter per version, in turn, so a noisy machine slows every version alike; the
table gives the median and the fastest of the rounds, and how many modules the import loaded. Writes
benchmarks/results/import_time.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # _provenance, also when a test loads this file by path
from _provenance import provenance, write_result  # noqa: E402

PROBE = (
    "import sys, time; started = time.perf_counter(); import liaf_hf; "
    "print(time.perf_counter() - started, len(sys.modules), liaf_hf.__file__)"
)


def measure(source: Path) -> tuple[float, int, str]:
    environment = {**os.environ, "PYTHONPATH": str(source)}
    output = subprocess.run(
        [sys.executable, "-c", PROBE], env=environment, check=True, capture_output=True, text=True
    ).stdout.split()
    return float(output[0]), int(output[1]), output[2]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--compare", nargs="*", default=[], help="Other versions' src folders.")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "import_time.json"))
    args = parser.parse_args(argv)
    sources = [ROOT / "src", *map(Path, args.compare)]
    for source in sources:
        measure(source)  # warm the file cache and the bytecode
    seconds: dict[str, list[float]] = {str(source): [] for source in sources}
    modules: dict[str, int] = {}
    for _ in range(args.rounds):
        for source in sources:
            elapsed, count, loaded_from = measure(source)
            if not loaded_from.startswith(str(source.resolve())):
                raise SystemExit(f"{source}: liaf_hf was imported from {loaded_from}, not from this folder")
            seconds[str(source)].append(elapsed)
            modules[str(source)] = count
    rows = [
        {
            "source": source,
            "median_seconds": statistics.median(times),
            "fastest_seconds": min(times),
            "modules_loaded": modules[source],
        }
        for source, times in seconds.items()
    ]
    print("| source | median s | fastest s | modules loaded |\n|---|---|---|---|")
    for row in rows:
        seconds_cells = f"{row['median_seconds']:.3f} | {row['fastest_seconds']:.3f}"
        print(f"| {row['source']} | {seconds_cells} | {row['modules_loaded']} |")
    result = {"command": "python benchmarks/import_time.py " + " ".join(sys.argv[1:] if argv is None else argv),
              "date": date.today().isoformat(), "rounds": args.rounds, "rows": rows}  # fmt: skip
    result["provenance"] = provenance()
    write_result(args.output, result)
    return result


if __name__ == "__main__":
    main()
