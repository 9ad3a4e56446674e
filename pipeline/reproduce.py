"""`dip reproduce FOLDER`: run every manifest of a folder as a sweep, report each, and gather the
papers' claims with their verdicts into one page.

Each manifest is an ordinary sweep (its own storage, resumable: a second call runs only what is
missing) followed by its ordinary report; the page adds what a reader of a reproduction wants
first: one row per claim with its verdict, and what each part cost in fit time on this machine.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from pathlib import Path

from pipeline.claims import Verdict, verdict_lines, verdicts
from pipeline.messages import UserError
from pipeline.report import FitFiles, load_fits, write_report
from pipeline.sources import expand_specs, open_store, read_manifest


@dataclass(frozen=True)
class Part:
    """One manifest of the set, as run: its fits, their summed fit time, this call's wall time."""

    manifest: Path
    name: str
    fits: int
    failed: int
    fit_seconds: float
    wall_seconds: float
    report: Path
    verdicts: tuple[Verdict, ...]


def manifests_in(folder: Path) -> list[Path]:
    """The set's manifests, in name order; an empty or missing folder is the user's error."""
    found = sorted([*folder.glob("*.yaml"), *folder.glob("*.yml")])
    if not found:
        raise UserError(f"{folder}: no manifests (*.yaml) to reproduce")
    return found


def count_fits(paths: list[Path]) -> tuple[int, int]:
    """(fits in the set, fits its stores already hold), so the set's progress can be told whole."""
    total = done = 0
    for path in paths:
        manifest = read_manifest(str(path))
        keys = {spec.key for spec in expand_specs(manifest)}
        total += len(keys)
        done += len(open_store(manifest).done_keys() & keys)
    return total, done


def run_part(path: Path, out: Path, address: str | None, index: int, count: int) -> Part:
    """Sweep one manifest (only what storage lacks), report it, and judge its claims."""
    from pipeline.sweep import run_sweep  # Ray and MLflow only once something is to run

    manifest = read_manifest(str(path))
    print(f"[{index}/{count}] {path.name}: sweep {manifest.name}", file=sys.stderr)
    start = time.monotonic()
    outcome = run_sweep(manifest, address)
    wall = time.monotonic() - start
    report = write_report(str(path), out / manifest.name)
    store = open_store(manifest)
    fits = load_fits(store)
    found = verdicts(fits, FitFiles(store))
    print(
        f"[{index}/{count}] {path.name}: {len(fits)} fits ({outcome.done} run now, {outcome.failed} failed) "
        f"in {wall:.0f} s; " + ", ".join(f"{v.claim} {v.status}" for v in found if v.fits),
        file=sys.stderr,
    )
    return Part(
        path, manifest.name, len(fits), outcome.failed, float(fits["seconds"].sum()), wall, report, tuple(found)
    )


def write_index(parts: list[Part], out: Path) -> Path:
    """The set's page: the claims' verdicts, what each manifest cost, links to the reports."""
    lines = ["# Reproduction", "", "## Verdicts", ""]
    lines += verdict_lines([v for part in parts for v in part.verdicts])
    lines += ["", "## Cost", "", "| manifest | fits | failed | fit time (sum) | wall time (this call) | report |"]
    lines.append("| --- | --- | --- | --- | --- | --- |")
    for p in parts:
        link = p.report.relative_to(out).as_posix()
        lines.append(
            f"| `{p.manifest.name}` | {p.fits} | {p.failed} | {p.fit_seconds / 60:.1f} min | "
            f"{p.wall_seconds / 60:.1f} min | [{p.name}]({link}) |"
        )
    index = out / "index.md"
    index.write_text("\n".join(lines) + "\n")
    return index


def reproduce(folder: Path, out: Path, address: str | None = None) -> Path:
    """Run, report and judge every manifest of `folder`; returns the set's ``index.md``."""
    paths = manifests_in(folder)
    out.mkdir(parents=True, exist_ok=True)
    total, done = count_fits(paths)
    print(f"set {folder}: {len(paths)} manifests, {total} fits, {done} stored, {total - done} to run", file=sys.stderr)
    start, parts = time.monotonic(), []
    for i, path in enumerate(paths, 1):
        parts.append(run_part(path, out, address, i, len(paths)))
        stored = sum(p.fits for p in parts)
        print(
            f"set {folder}: {i}/{len(paths)} manifests, {stored}/{total} fits stored, "
            f"{(time.monotonic() - start) / 60:.1f} min",
            file=sys.stderr,
        )
    return write_index(parts, out)
