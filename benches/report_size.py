#!/usr/bin/env python3
"""The report's size and time to render for 10 models x 100,000 events (README, "Report").

Writes 1,000,000 events of 10 models (drift_score, the last 40% of each model shifted up),
interleaved as one recording, and for two configs measures `visutility backtest --report`
(best of three), the page's size, its marks, and headless Chromium loading the page and taking
a 1200x2000 screenshot (best of three; Chromium's own start is timed on an empty page):

- detectors: ADWIN and Page-Hinkley on drift_score (a few signals per change);
- with a window: the same plus a drift_window whose mean stays over its threshold after the
  shift, so it fires on every event there (one mark each: the page grows with them).

    cargo build --release && python3 benches/report_size.py [target/release/visutility]
"""
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time

MODELS = 10
PER_MODEL = 100_000
HOOKS = """[hooks]
full = { command = ["/bin/true"], timeout_s = 60 }
cooldown_s = 3600
"""
DETECTORS = """[[models]]
match = "*"
[[models.policies]]
name = "adwin"
kind = "adwin"
metric = "drift_score"
[[models.policies]]
name = "ph"
kind = "page_hinkley"
metric = "drift_score"
"""
WINDOW = """[[models.policies]]
name = "window"
kind = "drift_window"
window = 100
threshold = 0.5
"""


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else "target/release/visutility"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    with tempfile.TemporaryDirectory() as d:
        events = os.path.join(d, "events.jsonl")
        rng = random.Random(1)
        with open(events, "w") as f:
            for i in range(PER_MODEL):
                shift = 0.5 if i > 0.6 * PER_MODEL else 0.0
                for m in range(MODELS):
                    f.write('{"model_id":"m%d","drift_score":%.4f,"ts":%d}\n'
                            % (m, rng.random() * 0.2 + shift, 1_800_000_000 + i * 60))
        empty = os.path.join(d, "empty.html")
        with open(empty, "w") as f:
            f.write("<!DOCTYPE html><title>empty</title>")
        start = min(shot(browser, d, empty) for _ in range(3)) if browser else None
        for label, body in (("detectors", DETECTORS), ("with a window", DETECTORS + WINDOW)):
            config = os.path.join(d, "config.toml")
            with open(config, "w") as f:
                f.write(HOOKS + body)
            page = os.path.join(d, "report.html")
            write = min(report(binary, config, events, page) for _ in range(3))
            html = open(page, encoding="utf-8").read()
            signals = len(re.findall(r'data-signal-index="', html))
            jobs = len(re.findall(r'data-job-index="', html))
            size = os.path.getsize(page)
            line = (f"{label:<14} {size / 1e6:6.2f} MB  {signals:>7} signal marks  {jobs:>4} job "
                    f"marks  written in {write:5.2f} s")
            if browser:
                render = min(shot(browser, d, page) for _ in range(3))
                line += f"  chromium load + screenshot {render:5.2f} s (start alone {start:4.2f} s)"
            print(line)


def report(binary, config, events, page):
    t = time.perf_counter()
    subprocess.run([binary, "backtest", "--config", config, "--retrain-s", "600",
                    "--report", page, events], check=True)
    return time.perf_counter() - t


def shot(browser, d, page):
    t = time.perf_counter()
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--user-data-dir=" + os.path.join(d, "profile"),
                    "--screenshot=" + os.path.join(d, "shot.png"), "--window-size=1200,2000",
                    "file://" + page],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
