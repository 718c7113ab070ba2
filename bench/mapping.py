"""Mapping throughput: records per second on one core, for each example mapping.

    .venv/bin/python bench/mapping.py [--seconds 2]

`apply` is the mapping alone (when, fields, drop, omit_empty) on an already normalised payload:
the target is >= 20,000 records/s. `delivery` is what the worker does per delivery before
sending: parse the stored payload (samples/v2-complete.json, 5.4 KB), normalise it (Qualifio
`variables`) and apply. The baseline, run in the same process, is parsing and normalising alone,
so the ratio shows what the mapping adds to it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path

from hookrelay.document import Document
from hookrelay.errors import Skip
from hookrelay.mapping import Mapping, load_mapping
from hookrelay.sources import normalise

ROOT = Path(__file__).resolve().parent.parent


def rate(work: Callable[[], object], seconds: float, rounds: int = 3) -> float:
    """Calls per second of `work` on this core: the best of `rounds` rounds sharing `seconds` of
    CPU time (as timeit does: other load on the machine only ever slows a round down)."""
    best = 0.0
    for _ in range(rounds):
        done, start = 0, time.process_time()
        while (elapsed := time.process_time() - start) < seconds / rounds:
            for _ in range(200):
                work()
            done += 200
        best = max(best, done / elapsed)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0, help="CPU seconds per measurement")
    args = parser.parse_args()
    stored = (ROOT / "samples" / "v2-complete.json").read_text(encoding="utf-8")

    def baseline() -> object:
        return normalise("qualifio", json.loads(stored))

    print(
        f"Python {platform.python_version()}, {os.cpu_count()} cores, one used; "
        f"payload {len(stored.encode())} bytes"
    )
    base = rate(baseline, args.seconds)
    print(f"baseline, parse + normalise: {base:,.0f} records/s\n")
    normalised = baseline()
    print(f"{'mapping':<14} {'apply/s':>9}   {'target':<7} {'delivery/s':>10} {'vs baseline':>12}")
    for path in sorted((ROOT / "mappings").glob("*.yaml")):
        mapping = load_mapping(Document(path), path.stem)

        def apply(m: Mapping = mapping, payload: object = normalised) -> object:
            try:
                return m.apply(payload)
            except Skip:
                return None

        def deliver(m: Mapping = mapping) -> object:
            return apply(m, normalise("qualifio", json.loads(stored)))

        alone, whole = rate(apply, args.seconds), rate(deliver, args.seconds)
        verdict = "ok" if alone >= 20_000 else "BELOW"
        print(
            f"{path.stem:<14} {alone:>9,.0f}   {verdict:<7} {whole:>10,.0f} {whole / base:>12.2f}"
        )


if __name__ == "__main__":
    main()
