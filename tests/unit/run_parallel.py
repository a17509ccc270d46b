#!/usr/bin/env python3
"""Runs a doctest binary's test cases in pieces, several processes at a time.

Most unit test cases wait on timers (a lease to lapse, a node to give up on a silent core):
the whole suite took 255 s of wall time for 43 s of CPU on 2 cores, one case after another.
Pieces side by side take a fraction of that. A piece is up to PER_PIECE consecutive cases of
one source file (doctest's own order), run as `BIN -sf=FILE --first=A --last=B ARGS...`;
ARGS (doctest filters such as -tce=...) go to every piece and to the listing.

Usage: run_parallel.py BIN [ARGS...]   (GFLEX_UNIT_JOBS: processes at a time, default 4)

GFLEX_UNIT_TIMES names a file of each piece's wall time from the last run (JSON): the pieces
that took longest are started first, so that the run does not end waiting on one slow piece
begun last. The file is written again after each run.

Prints the output of each piece that failed, the cases skipped and why, then one summary
line in doctest's words ("[doctest] test cases: N | P passed | F failed | S skipped").
Skipped are the cases marked `doctest::skip` (doctest leaves them out of its listing; they
are counted from a listing with --no-skip) and those that ended by GFLEX_SKIP_CASE
(skip_case.hpp: a GPU test without a GPU), which would otherwise count as passed. Exits 1 if a case failed or
a piece ended without its summary (a crash, a sanitizer's abort), 2 on a usage error.
"""

import html
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

PER_PIECE = 4
CASE = re.compile(r'<TestCase name="([^"]*)"[^>]*?filename="([^"]*)"')
SKIPPED_AT_RUN = re.compile(r"^\[gflex\] skipped: (.*)$", re.MULTILINE)
SUMMARY = re.compile(r"test cases:\s*(\d+)\s*\|\s*(\d+) passed\s*\|\s*(\d+) failed\s*\|\s*(\d+) skipped")


def listed_cases(binary, args):
    """(name, source file) of each case passing `args`, in doctest's order."""
    out = subprocess.run([binary, "-ltc", "--reporters=xml", *args], check=True,
                         capture_output=True, text=True).stdout
    return [(html.unescape(m.group(1)), html.unescape(m.group(2))) for m in CASE.finditer(out)]


def listed(binary, args):
    """The source file of each case passing `args`, in doctest's order."""
    return [f for _, f in listed_cases(binary, args)]


def pieces(files):
    """(file, first, last): consecutive cases of one file, at most PER_PIECE, 1-based."""
    out = []
    index = {}
    for f in files:
        index[f] = index.get(f, 0) + 1
        n = index[f]
        if out and out[-1][0] == f and out[-1][2] - out[-1][1] + 1 < PER_PIECE and out[-1][2] == n - 1:
            out[-1] = (f, out[-1][1], n)
        else:
            out.append((f, n, n))
    return out


def piece_key(piece):
    """A piece's name in the times file: its source file's name and its first and last case."""
    f, first, last = piece
    return f"{os.path.basename(f)}:{first}-{last}"


def main():
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    binary, args = sys.argv[1], sys.argv[2:]
    jobs = max(1, int(os.environ.get("GFLEX_UNIT_JOBS", "4")))
    files = listed(binary, args)
    everything = len(listed(binary, ["--no-skip=true"]))
    chosen = listed_cases(binary, args)
    marked = [name for name in dict.fromkeys(
        n for n, _ in listed_cases(binary, ["--no-skip=true", *args])) if name not in
        set(n for n, _ in chosen)]
    work = pieces(files)
    times_file = os.environ.get("GFLEX_UNIT_TIMES")
    times = {}
    if times_file and os.path.exists(times_file):
        try:
            with open(times_file) as t:
                times = {k: float(v) for k, v in json.load(t).items()}
        except (ValueError, AttributeError, TypeError):
            times = {}  # a damaged file only loses the order
    # Unknown pieces (new cases) first, as they may be slow; then the slowest known first.
    work.sort(key=lambda p: -times.get(piece_key(p), float("inf")))
    took = {}

    def run(piece):
        f, first, last = piece
        start = time.monotonic()
        with tempfile.TemporaryFile(mode="w+") as log:
            rc = subprocess.run([binary, f"-sf={f}", f"--first={first}", f"--last={last}", *args],
                                stdout=log, stderr=subprocess.STDOUT).returncode
            log.seek(0)
            text = log.read()
        took[piece_key(piece)] = round(time.monotonic() - start, 2)
        m = SUMMARY.search(text)
        failed = int(m.group(3)) if m else None
        return piece, rc, failed, text

    failed_cases = 0
    broken = 0
    skipped_at_run = []
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for (f, first, last), rc, failed, text in pool.map(run, work):
            skipped_at_run += SKIPPED_AT_RUN.findall(text)
            if failed is None or failed > 0 or rc != 0:
                name = os.path.basename(f)
                print(f"--- {name}, cases {first}-{last}: exit {rc}", flush=True)
                print(text[-20000:], flush=True)
                if failed is None or (failed == 0 and rc != 0):
                    broken += 1  # ended without its summary, or with an error outside a case
                else:
                    failed_cases += failed
    if times_file:
        with open(times_file, "w") as t:
            json.dump({**times, **took}, t, indent=0, sort_keys=True)
    slowest = sorted(took.items(), key=lambda kv: -kv[1])[:3]
    print("slowest pieces: " + ", ".join(f"{k} {v:.0f} s" for k, v in slowest), flush=True)
    for name in marked:
        print(f"skipped (marked): {name}", flush=True)
    for why in skipped_at_run:
        print(f"skipped: {why}", flush=True)
    total = len(files)
    bad = failed_cases + broken
    ran = total - len(skipped_at_run)
    print(f"[doctest] test cases: {ran:6d} | {ran - min(bad, ran):6d} passed | {bad:6d} failed | "
          f"{everything - ran:6d} skipped ({len(work)} processes, {jobs} at a time)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
