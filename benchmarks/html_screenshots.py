"""Render the HTML reports in a real headless browser and check that they are whole (issue 15, part 3).

    python benchmarks/html_screenshots.py [REPORT.html ...] [--out docs/screenshots]

For each report (default: benchmarks/results/*.html), Chromium (Debian's `chromium` package) writes a full-width
screenshot, and three checks are made:
- self-contained: no `http(s)://`, `<link`, `<script src` or `<img src` in the file, so nothing is fetched;
- every chart parsed: the DOM that Chromium dumps holds as many `<svg` elements as the file;
- drawn and fits: the screenshot has coloured (non-grey) pixels, the curves and bars, and its last non-white
  row is above the bottom of the window (nothing cut off).
Writes the PNGs and benchmarks/results/html_screenshots.{json,md}; exits 1 when a check fails.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
WIDTH, HEIGHT = 1200, 3000
EXTERNAL = re.compile(r"https?://(?!www\.w3\.org/)|<link\b|<script\b[^>]*\bsrc=|<img\b[^>]*\bsrc=", re.I)


def chromium(*args: str) -> subprocess.CompletedProcess:
    """Run headless Chromium with `args` (a fresh profile, no sandbox: this runs as root in a container)."""
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    if binary is None:
        sys.exit("chromium not found: apt-get install chromium")
    with tempfile.TemporaryDirectory() as profile:
        return subprocess.run([binary, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                               f"--user-data-dir={profile}", *args], capture_output=True, text=True, timeout=180)


def check(report: Path, out_dir: Path) -> dict:
    """Screenshot `report` into `out_dir` and measure what the checks read."""
    html = report.read_text(encoding="utf-8")
    shot = out_dir / f"{report.stem}.png"
    chromium(f"--window-size={WIDTH},{HEIGHT}", f"--screenshot={shot}", report.resolve().as_uri())
    dom = chromium("--dump-dom", report.resolve().as_uri()).stdout
    pixels = np.asarray(Image.open(shot).convert("RGB"), np.int16)
    coloured = int(np.count_nonzero(pixels.max(axis=2) - pixels.min(axis=2) > 60))
    inked = np.flatnonzero((pixels < 245).any(axis=(1, 2)))
    last_row = int(inked[-1]) if len(inked) else 0
    row = {"report": str(report.relative_to(ROOT)), "screenshot": str(shot.relative_to(ROOT)),
           "external_references": len(EXTERNAL.findall(html)), "svg_in_file": html.count("<svg"),
           "svg_in_dom": dom.count("<svg"), "coloured_pixels": coloured, "last_inked_row": last_row,
           "window_height": HEIGHT}
    row["ok"] = (row["external_references"] == 0 and row["svg_in_file"] > 0
                 and row["svg_in_dom"] == row["svg_in_file"] and coloured > 1000 and last_row < HEIGHT - 10)
    return row


def markdown(rows: list[dict], version: str, command: str) -> str:
    lines = ["# HTML reports in a headless browser", "",
             f"{version}, window {WIDTH}x{HEIGHT}. Command: `{command}`", "",
             "| report | screenshot | external references | charts in file / in DOM | coloured pixels | "
             "last inked row | ok |", "|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        lines.append(f"| {r['report']} | {r['screenshot']} | {r['external_references']} | {r['svg_in_file']} / "
                     f"{r['svg_in_dom']} | {r['coloured_pixels']:,} | {r['last_inked_row']} | "
                     f"{'yes' if r['ok'] else 'NO'} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reports", nargs="*", type=Path)
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshots")
    args = parser.parse_args()
    reports = args.reports or sorted(RESULTS.glob("*.html"))
    args.out.mkdir(parents=True, exist_ok=True)
    rows = [check(report, args.out) for report in reports]
    version = chromium("--version").stdout.strip() or "chromium"
    command = "python benchmarks/html_screenshots.py"
    (RESULTS / "html_screenshots.json").write_text(json.dumps({"browser": version, "command": command,
                                                               "results": rows}, indent=2) + "\n")
    (RESULTS / "html_screenshots.md").write_text(markdown(rows, version, command))
    for r in rows:
        print(f"{r['report']}: {'ok' if r['ok'] else 'FAILED'} ({r['svg_in_dom']} charts, "
              f"{r['coloured_pixels']:,} coloured pixels, screenshot {r['screenshot']})")
    print(f"reproduce with: {command}")
    if not all(r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
