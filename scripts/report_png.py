"""Render the top of a ``report.html`` to a PNG with headless Chromium: the picture of the report in the README.

    python scripts/report_png.py runs/bench/fmnist/tp-mlp/report.html docs/report.png
    python scripts/report_png.py runs/demo docs/report.png --width 1100 --height 1500 --max-kb 300

REPORT is a ``report.html`` or a folder holding one (``bioprop report DIR...`` or ``bioprop compare`` writes it).
Chromium (Debian's ``chromium``; ``make chromium`` installs it as root) loads the page offline at the window size
given, in pixels, and takes a screenshot of what fits in it; the picture is then reduced to at most 256 colours
(Pillow's median cut, no dithering: the report's flat colours survive it) and saved optimised. The script refuses,
one ``report_png: error: ...`` line and exit code 2, before rendering: a missing report or one that is not HTML, a
missing browser, an output that is not a ``.png`` file in an existing folder or that exists and is not a PNG (a file
this script did not write is never replaced), a window outside 200-8000 pixels a side, a ``--max-kb`` that is not a
positive number; after rendering: a browser that fails or takes over two minutes, a picture of another size than
asked (Chromium ignores a window it cannot make) or larger than ``--max-kb`` kibibytes (the README's budget: 300),
an output that cannot be written. Nothing is written then.
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import NoReturn

from PIL import Image


def fail(message: str) -> NoReturn:
    """One line on stderr, exit status 2."""
    print(f"report_png: error: {message}", file=sys.stderr)
    raise SystemExit(2)


MAX_SIDE = 8000  # pixels: a 8000 × 8000 screenshot is already 190 MiB of RGB
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
TIMEOUT_S = 120


def screenshot(chromium: str, page: Path, width: int, height: int) -> Image.Image:
    """The page as Chromium renders it in a ``width`` × ``height`` window (pixels), as an RGB picture."""
    with tempfile.TemporaryDirectory() as tmp:
        shot = Path(tmp) / "shot.png"
        argv = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                f"--window-size={width},{height}", "--virtual-time-budget=5000", f"--screenshot={shot}",
                page.resolve().as_uri()]  # fmt: skip
        try:
            result = subprocess.run(argv, capture_output=True, text=True, timeout=TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            fail(f"chromium did not finish rendering {page} within {TIMEOUT_S} s")
        if result.returncode != 0 or not shot.exists():
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            fail(f"chromium could not render {page} (exit {result.returncode}): {last}")
        with Image.open(shot) as picture:
            if picture.size != (width, height):
                fail(f"chromium drew {picture.size[0]} × {picture.size[1]} pixels, not the {width} × {height} asked")
            return picture.convert("RGB")


def compressed(picture: Image.Image) -> bytes:
    """The picture with an adaptive palette of at most 256 colours, PNG-encoded with the best compression."""
    palette = picture.quantize(colors=256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html, or a folder holding one")
    parser.add_argument("out", type=Path, help="the PNG to write")
    parser.add_argument("--width", type=int, default=1100, help="window width in pixels (default 1100)")
    parser.add_argument("--height", type=int, default=1500, help="window height in pixels (default 1500)")
    parser.add_argument("--max-kb", type=float, default=300.0, help="refuse a larger picture (KiB, default 300)")
    args = parser.parse_args(argv)
    page = args.report / "report.html" if args.report.is_dir() else args.report
    if not page.is_file():
        fail(f"no report at {page}: write one with `bioprop report DIR...`")
    with open(page, "rb") as handle:
        start = handle.read(1024).lower()
    if b"<!doctype html" not in start and b"<html" not in start:
        fail(f"{page} is not an HTML page (bioprop report writes report.html)")
    if args.out.is_dir():
        fail(f"{args.out} is a folder; the output must be a .png file")
    if args.out.suffix.lower() != ".png":
        fail(f"{args.out}: the output must be a .png file")
    if not args.out.parent.is_dir():
        fail(f"{args.out.parent}: no such folder")
    if args.out.exists():
        with open(args.out, "rb") as handle:
            if handle.read(len(PNG_SIGNATURE)) != PNG_SIGNATURE:
                fail(f"{args.out} exists and is not a PNG: not replaced")
    for flag, side in (("--width", args.width), ("--height", args.height)):
        if not 200 <= side <= MAX_SIDE:
            fail(f"{flag} {side}: between 200 and {MAX_SIDE} pixels")
    if not (math.isfinite(args.max_kb) and args.max_kb > 0):
        fail(f"--max-kb {args.max_kb:g}: a positive number of KiB")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        fail("chromium is not installed (Debian: apt-get install chromium, or `make chromium` as root)")
    data = compressed(screenshot(chromium, page, args.width, args.height))
    if len(data) > args.max_kb * 1024:
        fail(f"the picture is {len(data) / 1024:.0f} KiB, over --max-kb {args.max_kb:g}: make the window smaller")
    try:
        args.out.write_bytes(data)
    except OSError as exc:
        fail(f"{args.out}: cannot be written ({exc.strerror})")
    print(f"{args.out}: {args.width} × {args.height} pixels, {len(data) / 1024:.0f} KiB, from {page}")


if __name__ == "__main__":
    main()
