#!/usr/bin/env python3
"""Run the hand-written bug catalogue (mutation/catalogue.yaml) against the test suite.

    python scripts/mutation_catalogue.py [--only ID[,ID...]] [--stage STAGE] [--no-full]
                                         [--json mutation/catalogue-results.json]

Each catalogue entry is one deployment bug written as a text replacement. For
every chosen entry the script

1. checks that ``find`` occurs exactly once in ``file`` (an absent or
   ambiguous entry is refused, never guessed);
2. writes the bug into a private copy of the tree (one copy per invocation,
   made with everything but .git, virtual environments and caches; the
   mutated file is restored after each entry, so entries never mix);
3. runs the entry's ``tests`` with ``-x``; if they fail, the bug is killed;
4. only if the bug survived them, runs the whole cpu layer
   (``pytest -m cpu -x -n 2``) unless ``--no-full``;
5. counts a failing test as the killer only if it passes on the clean copy:
   a test that fails without any bug is deselected and the entry run again.

It prints a table (entry, verdict, killing test, seconds) and writes the same
as JSON. Entries marked ``equivalent`` (with the reason) are reported, not run
(``--run-equivalent`` runs them anyway). Exit status: 0 every entry killed (or
equivalent), 1 a bug survived, 2 a catalogue entry is malformed.

Exported models are cached under a key of the network sources, so a bug in
model.py/export.py/config.py re-exports. Mutant runs use their own model
cache, seeded with hard links to the normal one (``M2DET_CACHE_DIR``), so a
mutant's export never evicts or replaces a good one; entries a mutant added
are removed after it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CATALOGUE = REPO / "mutation" / "catalogue.yaml"
REQUIRED = ("id", "stage", "description", "file", "find", "replace", "tests")
EXCLUDE = {".git", "mutants", ".tox", ".pytest_cache", ".hypothesis", ".benchmarks", "__pycache__", "build",
           "dist", "m2det-nightly", ".cache-ci"}
FAILED_LINE = re.compile(r"^(?:FAILED|ERROR) (.+?)(?: - .*)?$", re.M)


class CatalogueError(Exception):
    pass


def load_catalogue(path: Path) -> List[dict]:
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml

        entries = yaml.safe_load(text)
    else:
        entries = json.loads(text)
    if not isinstance(entries, list):
        raise CatalogueError(f"{path}: expected a list of entries")
    seen = set()
    for i, entry in enumerate(entries):
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise CatalogueError(f"{path}: entry {i} ({entry.get('id', '?')}) lacks {missing}")
        if entry["id"] in seen:
            raise CatalogueError(f"{path}: id {entry['id']} appears twice")
        seen.add(entry["id"])
        if entry["find"] == entry["replace"]:
            raise CatalogueError(f"{entry['id']}: find and replace are the same text")
        if not isinstance(entry["tests"], list):
            raise CatalogueError(f"{entry['id']}: tests must be a list")
    return entries


def check_entry(entry: dict, root: Path) -> str:
    """The file's original text; CatalogueError when ``find`` is absent or ambiguous."""
    path = root / entry["file"]
    if not path.is_file():
        raise CatalogueError(f"{entry['id']}: {entry['file']} not found")
    text = path.read_text(encoding="utf-8")
    count = text.count(entry["find"])
    if count != 1:
        raise CatalogueError(f"{entry['id']}: `find` occurs {count} times in {entry['file']} (must be exactly once)")
    return text


def ignore(folder: str, names: Sequence[str]) -> List[str]:
    return [n for n in names if n in EXCLUDE or n.startswith(".venv") or n.endswith(".onnx") or n.endswith(".om")]


def seed_cache(source: Optional[Path], target: Path) -> None:
    """A private model cache holding hard links to the entries of ``source``."""
    target.mkdir(parents=True, exist_ok=True)
    if source is None or not source.is_dir():
        return
    for path in source.rglob("*"):
        dest = target / path.relative_to(source)
        if path.is_dir():
            dest.mkdir(parents=True, exist_ok=True)
        elif not dest.exists() and path.name != ".lock":
            try:
                os.link(path, dest)
            except OSError:
                shutil.copy2(path, dest)


def cache_entries(cache: Path) -> set:
    return {p for p in cache.glob("*/*") if p.is_dir()}


def pytest(copy: Path, args: Sequence[str], env: Dict[str, str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-x", *args]
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, cwd=copy, env=env, capture_output=True, text=True, timeout=timeout)
        code, out = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, out = -1, f"timed out after {timeout:.0f} s\n{exc.stdout or ''}"
    seconds = time.perf_counter() - start
    failed = FAILED_LINE.findall(out)
    return {"command": " ".join(cmd), "code": code, "seconds": round(seconds, 1), "failed": failed,
            "tail": "\n".join(out.strip().splitlines()[-15:])}


def verdict_of(run: dict) -> str:
    # 0: all passed (survived); 5: nothing collected (survived: nothing looked);
    # 1 failures, 2 interrupted/collection error, 3 internal, -1 timeout: the bug was noticed.
    # 4 is pytest's usage error, and also a conftest that cannot be imported (no torch in
    # the interpreter, say): nothing was tested, so nothing was killed. A gate that did not
    # measure its figure fails; it never passes.
    if run["code"] == 4:
        return "not run"
    return "survived" if run["code"] in (0, 5) else "killed"


class CleanTree:
    """Which tests fail WITHOUT any bug: such a test kills nothing. A killing
    test is rerun on the clean copy once; when it fails there too it is
    deselected and the entry run again."""

    def __init__(self, copy: Path, env: Dict[str, str], timeout: float):
        self.copy, self.env, self.timeout = copy, env, timeout
        self.verdicts: Dict[str, bool] = {}

    def fails(self, nodeid: str) -> bool:
        if nodeid not in self.verdicts:
            run = pytest(self.copy, [nodeid], self.env, self.timeout)
            self.verdicts[nodeid] = run["code"] not in (0, 5)
            if self.verdicts[nodeid]:
                print(f"   (fails on the clean tree too, deselected from now on: {nodeid})", flush=True)
        return self.verdicts[nodeid]

    def deselect(self) -> List[str]:
        return [arg for nodeid, bad in sorted(self.verdicts.items()) if bad for arg in ("--deselect", nodeid)]


def run_checked(copy: Path, args: List[str], env: Dict[str, str], timeout: float, target: Path, original: str,
                mutated: str, clean: CleanTree) -> dict:
    """pytest on the mutated tree; a failure is a kill only if that test passes on the clean tree."""
    for _ in range(10):
        target.write_text(mutated, encoding="utf-8")
        run = pytest(copy, [*args, *clean.deselect()], env, timeout)
        if verdict_of(run) == "survived" or not run["failed"]:
            return run
        target.write_text(original, encoding="utf-8")
        if not clean.fails(run["failed"][0]):
            return run
    return run


def run_entry(entry: dict, copy: Path, env: Dict[str, str], full: bool, workers: str, timeout: float,
              cache: Path, clean: CleanTree) -> dict:
    original = check_entry(entry, REPO)
    target = copy / entry["file"]
    mutated = original.replace(entry["find"], entry["replace"], 1)
    before = cache_entries(cache)
    result = {"id": entry["id"], "stage": entry["stage"], "file": entry["file"], "runs": []}
    try:
        tests = [t for t in entry["tests"] if (copy / t.split("::")[0]).exists()]
        missing = sorted(set(entry["tests"]) - set(tests))
        if missing:
            result["missing_tests"] = missing
        verdict = "survived"
        if tests:
            run = run_checked(copy, ["-m", "cpu", *tests], env, timeout, target, original, mutated, clean)
            run["phase"] = "targeted"
            result["runs"].append(run)
            verdict = verdict_of(run)
        if verdict == "survived" and full:
            run = run_checked(copy, ["-m", "cpu", "-n", workers], env, timeout, target, original, mutated, clean)
            run["phase"] = "full"
            result["runs"].append(run)
            verdict = verdict_of(run)
    finally:
        target.write_text(original, encoding="utf-8")
        for folder in cache_entries(cache) - before:  # a mutant's export: never reused
            shutil.rmtree(folder, ignore_errors=True)
    result["verdict"] = verdict
    last = result["runs"][-1] if result["runs"] else None
    result["killed_by"] = (last["failed"][0] if last and last["failed"] else
                           (f"exit {last['code']} ({last['phase']})" if last and verdict == "killed" else None))
    result["phase"] = last["phase"] if last else None
    result["seconds"] = round(sum(r["seconds"] for r in result["runs"]), 1)
    return result


def table(results: List[dict]) -> str:
    rows = [("id", "stage", "verdict", "phase", "killed by", "s")]
    for r in results:
        rows.append((r["id"], r["stage"], r["verdict"], r.get("phase") or "-", r.get("killed_by") or "-",
                     f"{r.get('seconds', 0):.0f}"))
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--catalogue", type=Path, default=DEFAULT_CATALOGUE)
    parser.add_argument("--only", help="comma-separated entry ids")
    parser.add_argument("--stage", help="only entries of this stage")
    parser.add_argument("--no-full", action="store_true", help="skip the full cpu-suite run for survivors")
    parser.add_argument("--run-equivalent", action="store_true", help="also run entries marked equivalent")
    parser.add_argument("--workers", default=os.environ.get("PYTEST_XDIST_WORKERS", "2"), help="pytest -n (full run)")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds per pytest run")
    parser.add_argument("--json", type=Path, default=REPO / "mutation" / "catalogue-results.json")
    parser.add_argument("--check", action="store_true", help="only check that every entry applies")
    args = parser.parse_args(argv)

    try:
        entries = load_catalogue(args.catalogue)
        if args.only:
            wanted = [s.strip() for s in args.only.split(",") if s.strip()]
            unknown = sorted(set(wanted) - {e["id"] for e in entries})
            if unknown:
                raise CatalogueError(f"unknown entry id(s) {unknown}")
            entries = [e for e in entries if e["id"] in wanted]
        if args.stage:
            entries = [e for e in entries if e["stage"] == args.stage]
        for entry in entries:
            check_entry(entry, REPO)
    except CatalogueError as exc:
        print(f"mutation_catalogue: {exc}", file=sys.stderr)
        return 2
    if args.check:
        print(f"{len(entries)} entries apply cleanly")
        return 0

    work = Path(tempfile.mkdtemp(prefix="m2det-mutation-"))
    copy = work / "tree"
    shutil.copytree(REPO, copy, ignore=ignore, symlinks=True)
    cache = work / "cache"
    source_cache = os.environ.get("M2DET_CACHE_DIR")
    seed_cache(Path(source_cache) if source_cache else None, cache)
    env = {**os.environ, "PYTHONPATH": str(copy), "M2DET_CACHE_DIR": str(cache), "PYTHONDONTWRITEBYTECODE": "1"}
    print(f"tree copied to {copy}; {len(entries)} entries", flush=True)
    results = []
    clean = CleanTree(copy, env, args.timeout)
    try:
        for entry in entries:
            if entry.get("equivalent") and not args.run_equivalent:
                results.append({"id": entry["id"], "stage": entry["stage"], "file": entry["file"],
                                "verdict": "equivalent", "reason": entry["equivalent"], "runs": [], "seconds": 0})
                continue
            result = run_entry(entry, copy, env, not args.no_full, args.workers, args.timeout, cache, clean)
            results.append(result)
            print(f"{result['verdict']:>9}  {entry['id']:<30} {result['seconds']:6.1f} s  "
                  f"{result.get('killed_by') or ''}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    killed = sum(r["verdict"] == "killed" for r in results)
    equivalent = sum(r["verdict"] == "equivalent" for r in results)
    survived = [r for r in results if r["verdict"] == "survived"]
    not_run = [r for r in results if r["verdict"] == "not run"]
    print()
    print(table(results))
    print(f"\nkilled {killed} of {len(results) - equivalent} non-equivalent entries"
          + (f" ({equivalent} equivalent)" if equivalent else "")
          + (f"; SURVIVED: {', '.join(r['id'] for r in survived)}" if survived else "")
          + (f"; NOT RUN (pytest could not start: see the json's tails): {', '.join(r['id'] for r in not_run)}"
             if not_run else ""))
    summary = {"catalogue": str(args.catalogue), "killed": killed, "total": len(results),
               "equivalent": equivalent, "survived": [r["id"] for r in survived], "not_run": [r["id"] for r in not_run],
               "full_run": not args.no_full, "failing_without_bugs": sorted(n for n, bad in clean.verdicts.items() if bad),
               "results": results}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(summary, indent=1) + "\n", encoding="utf-8")
    print(f"results: {args.json}")
    return 1 if survived or not_run else 0


if __name__ == "__main__":
    raise SystemExit(main())
