#!/usr/bin/env python3
"""Backtest speed in events per second (README, "Backtest speed").

Writes 1,000,000 events of 100 models (drift_score, the second 40% shifted) and replays them
through drift_window + ADWIN + Page-Hinkley with `visutility backtest`, plain (one line per
signal), `--summary`, `--simulate --summary` and `--detail`; best of three runs each.

    cargo build --release && python3 benches/backtest_speed.py [target/release/visutility]
"""
import os
import random
import subprocess
import sys
import tempfile
import time

N = 1_000_000
CONFIG = """[hooks]
full = { command = ["/bin/true"], timeout_s = 60 }
[[models]]
match = "*"
[[models.policies]]
kind = "drift_window"
window = 100
threshold = 0.5
[[models.policies]]
kind = "adwin"
metric = "drift_score"
[[models.policies]]
kind = "page_hinkley"
metric = "drift_score"
"""


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/visutility"
    with tempfile.TemporaryDirectory() as d:
        events = os.path.join(d, "events.jsonl")
        config = os.path.join(d, "config.toml")
        with open(config, "w") as f:
            f.write(CONFIG)
        rng = random.Random(1)
        with open(events, "w") as f:
            for i in range(N):
                shift = 0.5 if i > 0.6 * N else 0.0
                f.write('{"model_id":"m%d","drift_score":%.4f,"ts":%d}\n'
                        % (i % 100, rng.random() * 0.2 + shift, 1_800_000_000 + i))
        for mode in ([], ["--summary"], ["--simulate", "--retrain-s", "600", "--summary"],
                     ["--detail"]):
            best = min(run(binary, config, events, mode) for _ in range(3))
            label = " ".join(mode) or "(plain)"
            print(f"{label:<40} {best:6.2f} s  {N / best / 1e6:5.2f} M events/s")


def run(binary, config, events, mode):
    t = time.perf_counter()
    subprocess.run([binary, "backtest", "--config", config, *mode, events],
                   stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
