#!/usr/bin/env python3
"""Gate on mutmut's results: the share of non-equivalent mutants killed.

    mutmut run && python scripts/mutation_score.py [--min 95] [--equivalent mutation/equivalent-mutants.txt]

Reads ``mutants/*.meta`` (what ``mutmut run`` recorded per mutant), drops the
mutants listed as equivalent (one mutmut name a line, ``#`` comments; each is
explained in mutation/survivors.md), and prints killed / total, the score and
every surviving mutant. Exit 1 when the score is under ``--min`` or a listed
equivalent mutant no longer exists or is now killed (the list must stay true),
2 when there are no results.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Dict

REPO = Path(__file__).resolve().parents[1]
CAUGHT = {"killed", "timeout", "caught by type check"}  # a timeout is a caught mutant (an endless loop)


def load(mutants: Path) -> Dict[str, object]:
    codes: Dict[str, object] = {}
    for meta in sorted(mutants.rglob("*.meta")):
        data = json.loads(meta.read_text(encoding="utf-8"))
        for name, code in (data.get("exit_code_by_key") or {}).items():
            codes[name] = code
    return codes


def status(code) -> str:
    """mutmut's own reading of a mutant's exit code; 'killed' for everything caught."""
    from mutmut.stats import status_by_exit_code

    text = status_by_exit_code[code]
    return "killed" if text in CAUGHT else text


def read_equivalent(path: Path) -> set:
    if not path.is_file():
        return set()
    names = set()
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            names.add(line)
    return names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=Path, default=Path("mutants"))
    parser.add_argument("--min", type=float, default=95.0, help="lowest acceptable score in percent")
    parser.add_argument("--equivalent", type=Path, default=REPO / "mutation" / "equivalent-mutants.txt")
    parser.add_argument("--json", type=Path, help="write the counts and survivors here")
    args = parser.parse_args(argv)

    codes = load(args.mutants)
    if not codes:
        print(f"mutation_score: no mutmut results under {args.mutants} (run `mutmut run` first)", file=sys.stderr)
        return 2
    equivalent = read_equivalent(args.equivalent)
    stale = sorted(n for n in equivalent if n not in codes or status(codes[n]) == "killed")
    statuses = {name: status(code) for name, code in codes.items() if name not in equivalent}
    counts = Counter(statuses.values())
    judged = len(statuses) - counts["skipped"]
    killed = counts["killed"]
    score = 100.0 * killed / judged if judged else 0.0
    survivors = sorted(n for n, s in statuses.items() if s not in ("killed", "skipped"))
    print(f"mutants: {len(codes)}; equivalent (mutation/survivors.md): {len(equivalent)}; "
          f"judged: {judged}; " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())))
    print(f"mutation score: {killed}/{judged} = {score:.1f}% of non-equivalent mutants killed (minimum {args.min}%)")
    for name in survivors:
        print(f"  {statuses[name]}: {name}   (mutmut show {name})")
    for name in stale:
        print(f"  listed as equivalent but {'absent' if name not in codes else 'killed'}: {name}: "
              "update mutation/equivalent-mutants.txt")
    if args.json:
        args.json.write_text(json.dumps({"mutants": len(codes), "equivalent": sorted(equivalent), "judged": judged,
                                         "killed": killed, "score": score, "counts": dict(counts),
                                         "survivors": survivors, "stale_equivalent": stale}, indent=1) + "\n")
    return 1 if score < args.min or stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
