#!/usr/bin/env python3
"""Two per-operator tables (benchmarks/opprof/run.sh) side by side, largest first.

Usage: compare.py OURS.txt REFERENCE.txt [ROWS (default 50)]
"""
import sys


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            ms, _unit, calls, name = line[:24].split() + [line[24:].rstrip("\n")]
            rows[name] = (float(ms), int(calls))
    return rows


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    ours, ref = load(sys.argv[1]), load(sys.argv[2])
    limit = int(sys.argv[3]) if len(sys.argv) > 3 else 50
    names = sorted(set(ours) | set(ref), key=lambda k: -max(ours.get(k, (0, 0))[0], ref.get(k, (0, 0))[0]))
    print(f"{'ours ms':>10} {'calls':>7} {'ref ms':>10} {'calls':>7}  operator")
    for name in names[:limit]:
        (a, n), (b, m) = ours.get(name, (0.0, 0)), ref.get(name, (0.0, 0))
        print(f"{a:10.1f} {n:7d} {b:10.1f} {m:7d}  {name}")


if __name__ == "__main__":
    main()
