"""Render an evaluation report in headless Chromium and check the screenshot is not blank.

    python benchmarks/render_report.py report.html [--png report.png]
    python benchmarks/render_report.py --demo        # build a small report first (tiny model)

Exits 0 with "skipped" when no Chromium/Chrome binary is installed
(Debian: ``apt-get install -y chromium``).
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(html: Path, png: Path, browser: str, size: str = "1400,3000",
               timeout: float = 120.0) -> None:
    cmd = [browser, "--headless", "--no-sandbox", "--disable-gpu",
           "--disable-background-networking", "--hide-scrollbars", f"--window-size={size}",
           f"--screenshot={png}", html.resolve().as_uri()]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0 or not png.is_file():
        raise RuntimeError(f"chromium failed ({proc.returncode}): {proc.stderr[-2000:]}")


def check_not_blank(png: Path) -> dict[str, float]:
    """The page drew something: thousands of non-white pixels in many distinct colours."""
    import numpy as np
    from PIL import Image

    arr = np.asarray(Image.open(png).convert("RGB"))
    nonwhite = float((arr.min(axis=2) < 240).mean())
    colours = len(np.unique(arr.reshape(-1, 3)[:: max(1, arr.size // 600000)], axis=0))
    if nonwhite * arr.shape[0] * arr.shape[1] < 2000 or colours < 20:
        raise RuntimeError(f"{png}: screenshot looks blank (non-white {nonwhite:.3%}, "
                           f"{colours} colours)")
    return {"width": arr.shape[1], "height": arr.shape[0], "nonwhite": nonwhite,
            "colours": colours}


def demo_report(directory: Path) -> Path:
    """A small report from the tiny (untrained) model on real images, for a smoke render."""
    from meditok.cli import main

    data = ROOT.parent / "shared" / "data"
    run = directory / "tiny"
    main(["eval", "recon", "preset:tiny", "--images", str(data / "lpips_reference"),
          "--no-fid", "--out", str(run), "--quiet"])
    main(["eval", "codebook", "preset:tiny", "--medmnist", "breastmnist:val", "--data-root",
          str(data), "--out", str(run), "--quiet", "--tsne-points", "64"])
    out = directory / "report.html"
    main(["report", str(run), "--out", str(out)])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("report", nargs="?", type=Path)
    p.add_argument("--png", type=Path, default=None)
    p.add_argument("--demo", action="store_true")
    args = p.parse_args(argv)
    browser = find_browser()
    if browser is None:
        print("skipped: no chromium/chrome binary found (apt-get install -y chromium)")
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        report = demo_report(Path(tmp)) if args.demo else args.report
        if report is None or not Path(report).is_file():
            p.error("give a report HTML file or --demo")
        png = args.png or Path(report).with_suffix(".png")
        if args.demo and args.png is None:
            png = Path(tempfile.gettempdir()) / "meditok-report-demo.png"
        screenshot(Path(report), png, browser)
        info = check_not_blank(png)
    print(f"rendered {report} with {Path(browser).name} -> {png} "
          f"({info['width']}x{info['height']}, {info['nonwhite']:.1%} non-white, "
          f"{info['colours']} colours)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
