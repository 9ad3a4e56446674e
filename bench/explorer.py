"""How big the trajectory explorer is and how fast it opens, for a real sweep and for the same
fits copied to 1,000 (or --fits N).

    python -m bench.explorer results/quickstart              # then the copy of 1,000 fits
    python -m bench.explorer results/quickstart --fits 10000 --json explorer.json

The copies are the sweep's own fits written again under new keys through `Store.write_fit`, so
each has real metrics, snapshots and images. For each store: the time to write the explorer
(`write_explorer`, first with no fit files, then again reusing them), what the page loads when it
opens (page, libraries, fit table) against what it loads only for a fit it shows, and in headless
Chromium the time until the first fit's images are on screen and to add a second fit beside it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from pipeline.explorer import FIT_FOLDER, FOLDER, write_explorer
from pipeline.report import load_fits, varying_settings
from pipeline.storage import Store

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def log(message: str) -> None:
    print(message, flush=True)


def copied(source: Store, count: int, root: Path) -> Store:
    """A store of `count` fits: the source's fits over and over, each under a key of its own."""
    store = Store(str(root))
    originals = sorted(source.done_keys())
    for i in range(count):
        key = originals[i % len(originals)]
        new = hashlib.sha256(f"{key}:{i}".encode()).hexdigest()[:16]
        trajectory = source.read_trajectory(key)
        names = [name for name in ("clean", "degraded", "final") if source.has_image(key, name)]
        images = {name: source.read_image(key, name) for name in names}
        table = source.read_metrics(key)
        metrics = {c: table.column(c).to_numpy() for c in table.column_names}
        summary = source.summary(key) | {"key": new, "seed": i}
        store.write_fit(new, source.read_spec(key), summary, metrics, trajectory, images)
    return store


def megabytes(paths: list[Path]) -> float:
    return sum(p.stat().st_size for p in paths) / 1e6


def timed_report(store: Store, out: Path) -> dict[str, float]:
    started = time.perf_counter()
    fits = load_fits(store)
    loaded = time.perf_counter()
    write_explorer(fits, store, out, "bench", varying_settings(fits), most=None)
    written = time.perf_counter()
    write_explorer(fits, store, out, "bench", varying_settings(fits), most=None)
    return {
        "fits": len(fits),
        "load_fits_s": loaded - started,
        "write_first_s": written - loaded,
        "write_again_s": time.perf_counter() - written,
    }


def sizes(out: Path) -> dict[str, float]:
    folder = out / FOLDER
    opening = [out / "explorer.html", folder / "fits.js", folder / "explorer.js", folder / "explorer.css"]
    fit_files = list((folder / FIT_FOLDER).glob("*.js"))
    return {
        "open_mb": megabytes(opening + list((folder / "lib").iterdir())),
        "fit_table_mb": megabytes([folder / "fits.js"]),
        "per_fit_mb": megabytes(fit_files) / max(len(fit_files), 1),
        "all_fits_mb": megabytes(fit_files),
    }


def browser_times(page_path: Path) -> dict[str, float]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1500})
            started = time.perf_counter()
            page.goto(page_path.as_uri())
            page.locator(".fit-row img.output").first.wait_for(timeout=120_000)
            opened = time.perf_counter()
            page.locator("#fits tbody tr").nth(1).click()
            page.wait_for_function("document.querySelectorAll('.fit-row').length === 2", timeout=60_000)
            return {"open_s": opened - started, "second_fit_s": time.perf_counter() - opened}
        finally:
            browser.close()


def measure(store: Store, out: Path) -> dict[str, Any]:
    row: dict[str, Any] = timed_report(store, out) | sizes(out)
    if CHROMIUM:
        row |= browser_times(out / "explorer.html")
    log("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store", help="a sweep's storage root, e.g. results/quickstart")
    parser.add_argument("--fits", type=int, default=1000, help="fits in the copied store (default 1000)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args()
    source = Store(args.store)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        log(f"{args.store}:")
        rows["sweep"] = measure(source, Path(tmp) / "sweep")
        log(f"copying its fits to {args.fits} …")
        started = time.perf_counter()
        big = copied(source, args.fits, Path(tmp) / "store")
        log(f"  written in {time.perf_counter() - started:.0f} s")
        log(f"{args.fits} fits:")
        rows["copies"] = measure(big, Path(tmp) / "copies")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
