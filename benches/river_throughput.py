#!/usr/bin/env python3
"""River 0.26.1's updates per second per detector, for the side-by-side in benches/detectors.rs.

Method as in River's own figures (a fresh detector per run, a Python loop calling update over a
pre-built list, GC disabled during the loop, median of REPS runs), timed in process CPU time as our side is, so load from other processes counts less. Streams:
N(0,1) (seed 123) for real-valued detectors, Bernoulli(0.1) (seed 124) for binary ones.
Prints one JSON object: {"<name>": updates_per_second, ...}.
"""
import gc
import json
import random
import statistics
import sys
import time

from river import drift
from river.drift import binary

N = int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000
REPS = int(sys.argv[2]) if len(sys.argv) > 2 else 3

rng = random.Random(123)
real = [rng.gauss(0.0, 1.0) for _ in range(N)]
rng = random.Random(124)
bits = [1 if rng.random() < 0.1 else 0 for _ in range(N)]

cases = {
    "adwin": (lambda: drift.ADWIN(), real),
    "page_hinkley": (lambda: drift.PageHinkley(), real),
    "kswin": (lambda: drift.KSWIN(seed=42), real[: max(N // 50, 1000)]),
    "ddm": (lambda: binary.DDM(), bits),
    "eddm": (lambda: binary.EDDM(), bits),
    "hddm_a": (lambda: binary.HDDMA(), bits),
    "hddm_w": (lambda: binary.HDDMW(), bits),
}

out = {}
for name, (make, data) in cases.items():
    rates = []
    for _ in range(REPS):
        det = make()
        gc.disable()
        t = time.process_time()
        for x in data:
            det.update(x)
        dt = time.process_time() - t
        gc.enable()
        rates.append(len(data) / dt)
    out[name] = statistics.median(rates)
print(json.dumps(out))
