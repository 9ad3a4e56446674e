"""The `dip` command: parses arguments and calls one pipeline function per command.

Expected errors (`pipeline.messages.DipError`: bad option values, unreadable images, invalid
manifests, unreachable storage or services) are printed as one line ``dip: error: …`` with exit
code 2; ``--debug`` adds their traceback. Anything else is a bug and raises with its traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args, get_origin

from dipmodel.networks import NETWORK_NAMES
from dipmodel.operators import TASK_PARAMS, TaskParam, needed_params
from pipeline.messages import DipError, Terminated, UserError

if TYPE_CHECKING:  # imported lazily at run time (pydantic, fsspec): only the commands that read manifests need them
    from pipeline.manifest import Manifest


def add_fit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fit",
        help="fit one image and write the restored image, metrics and curves",
        description="Fit a deep image prior to one degraded image.",
    )
    p.add_argument("image", help="PNG/JPEG/BMP path, or a bundled sample such as skimage:astronaut")
    p.add_argument("--task", choices=list(TASK_PARAMS), default="denoise")
    for param, tasks in task_options().items():  # one option per degradation parameter
        kind = {"choices": get_args(param.type)} if get_origin(param.type) is Literal else {"type": param.type}
        p.add_argument(f"--{param.name}", **kind, help=f"{param.help} ({', '.join(tasks)}); default {param.default}")
    p.add_argument("--model", choices=NETWORK_NAMES, default="decoder")
    p.add_argument("--width", type=int, default=128, help="channels (or units) per layer")
    p.add_argument("--depth", type=int, default=5, help="scales / upsampling steps / layers")
    p.add_argument(
        "--upsample",
        choices=["bilinear", "nearest", "gaussian", "bed_of_nails"],
        default=None,
        help="upsampling layer; default gaussian when --up-sigma is given, else bilinear",
    )
    p.add_argument(
        "--up-sigma",
        type=float,
        nargs="+",
        default=None,
        metavar="SIGMA",
        help="Gaussian upsampling sigma: one for every upsampling layer (Shi et al.'s text: 0.5), or one "
        "per layer, coarsest first (their released Decoder: 0.1 0.1 0.1 0.5 0.5)",
    )
    p.add_argument(
        "--lam",
        type=float,
        default=None,
        help="Lipschitz bound of every conv but the output projection (Shi et al.: 2); uses Lipschitz "
        "normalisation. Omit for the unconstrained network with batch norm",
    )
    p.add_argument(
        "--bound-head",
        action="store_true",
        help="bound the final 1x1 output projection by --lam too (the authors' code leaves it unbounded)",
    )
    p.add_argument(
        "--detach-sigma",
        action="store_true",
        help="divide by max(1, sigma(W)/lam) held constant in backward, as the authors' code",
    )
    p.add_argument(
        "--input",
        choices=["noise", "fourier"],
        default="noise",
        help="network input: uniform noise in [0, 0.1] (the paper text) or sin/cos of random "
        "phases (the released scripts)",
    )
    p.add_argument("--negative-slope", type=float, default=0.01, help="LeakyReLU slope (Ulyanov et al.'s DIP: 0.2)")
    p.add_argument("--iters", type=int, default=3000, help="iteration budget")
    p.add_argument("--lr", type=float, default=1e-3, help="Adam's learning rate (Ulyanov et al.'s DIP: 0.01)")
    p.add_argument(
        "--no-backtrack",
        dest="backtrack",
        action="store_false",
        help="turn off the safeguard that restores the last good parameters after a collapse",
    )
    p.add_argument(
        "--backtrack-drop",
        type=float,
        default=5.0,
        help="dB fall of the PSNR against the degraded image that counts as a collapse",
    )
    p.add_argument(
        "--input-noise-std",
        type=float,
        default=0.0,
        help="add N(0, std^2) to the input every step (Ulyanov et al.'s DIP: 1/30)",
    )
    p.add_argument(
        "--output-average",
        type=float,
        default=0.0,
        help="record the exponential average of outputs with this weight (Ulyanov et al.'s DIP: 0.99)",
    )
    p.add_argument("--seed", type=int, default=0, help="seeds the network, its input and the degradation")
    p.add_argument("--crop", type=int, default=None, help="centre-crop to at most this many pixels a side")
    p.add_argument("--grey", action="store_true", help="fit the luma (Y of YCbCr) of a colour image")
    p.add_argument("--metric-stride", type=int, default=1)
    p.add_argument("--halt-at-stop", action="store_true", help="end the fit when the automatic stop fires")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, …")
    p.add_argument("--out", type=Path, default=Path("runs/fit"), help="output folder")


def task_options() -> dict[TaskParam, list[str]]:
    """Every degradation parameter, once, with the tasks that take it."""
    options: dict[TaskParam, list[str]] = {}
    for task, params in TASK_PARAMS.items():
        for param in params:
            options.setdefault(param, []).append(task)
    return options


def task_params(task: str, args: argparse.Namespace) -> dict[str, Any]:
    """The degradation parameters of `task`: those given as options, the rest at their defaults."""
    names = [p.name for p in TASK_PARAMS[task]]
    given = {p.name: getattr(args, p.name) for p in task_options() if getattr(args, p.name) is not None}
    if extra := sorted(set(given) - set(names)):
        raise UserError(
            f"--{extra[0]} does not apply to --task {task} "
            f"(it takes: {', '.join('--' + n for n in names) or 'no options'})"
        )
    params = {p.name: p.default for p in TASK_PARAMS[task]} | given
    return {name: params[name] for name in needed_params(task, params)} | given


def fit_manifest(args: argparse.Namespace) -> dict[str, Any]:
    """`dip fit`'s options as a one-image manifest, so its fit has a sweep's spec, checks and key."""
    from pipeline.images import SAMPLE_PREFIX

    sample = args.image.removeprefix(SAMPLE_PREFIX) if args.image.startswith(SAMPLE_PREFIX) else None
    sigmas = args.up_sigma or [0.5]
    model = {
        "name": args.model,
        "width": args.width,
        "depth": args.depth,
        "lam": args.lam,
        "upsample": args.upsample or ("gaussian" if args.up_sigma is not None else "bilinear"),
        "up_sigma": sigmas[0] if len(sigmas) == 1 else sigmas,
        "input": args.input,
        "bound_head": args.bound_head,
        "detach_sigma": args.detach_sigma,
        "negative_slope": args.negative_slope,
    }
    fit = {
        "iterations": args.iters,
        "lr": args.lr,
        "metric_stride": args.metric_stride,
        "halt_at_stop": args.halt_at_stop,
        "backtrack": args.backtrack,
        "backtrack_drop": args.backtrack_drop,
        "input_noise_std": args.input_noise_std,
        "output_average": args.output_average,
    }
    image = {"sample": sample} if sample else {"uris": [args.image]}
    return {
        "name": "fit",
        "images": [image | {"crop": args.crop, "grey": args.grey or None}],
        "tasks": [{"task": args.task, "params": task_params(args.task, args)}],
        "model": model,
        "fit": fit,
        "seeds": [args.seed],
        "storage": str(args.out),
        "mlflow": {"enabled": False},
    }


def run_fit(args: argparse.Namespace) -> int:
    """One fit through the sweep's own code: a one-image manifest, its FitSpec run by the worker into
    a store at --out, then the stored result shown there as images, metrics.csv and curves.png."""
    from PIL import Image
    from pydantic import ValidationError

    from dipmodel.fit import FitDivergedError
    from pipeline.images import load_image
    from pipeline.manifest import Manifest, expand
    from pipeline.manifest.errors import loc_path, pydantic_message
    from pipeline.single import write_fit_folder
    from pipeline.storage import Store
    from pipeline.worker import execute_fit

    try:
        manifest = Manifest.model_validate(fit_manifest(args))
    except ValidationError as err:
        raise UserError(
            "; ".join(f"{loc_path(tuple(e['loc']))}: {pydantic_message(e)}" for e in err.errors())
        ) from None
    [spec] = expand(manifest)
    store = Store(manifest.storage_uri)
    store.write_sweep(manifest.model_dump(mode="json"))
    upsample = spec.network["upsample"]
    title = f"{args.image} · {args.task} {spec.task_params} · {args.model} λ={args.lam} up={upsample}"
    print(f"fitting {title} for {args.iters} iterations on {args.device} …", file=sys.stderr)
    record = execute_fit(spec, store, args.device)
    if record["status"] == "failed":
        if args.debug:
            print(record["traceback"], file=sys.stderr)
        if record["reason"].startswith(f"{FitDivergedError.__name__}:"):
            raise FitDivergedError(record["reason"].split(": ", 1)[1])
        raise UserError(record["reason"].split(": ", 1)[1])
    s = write_fit_folder(store, spec.key, args.out, title)
    original = load_image(args.image)
    w, h = Image.open(args.out / "final.png").size
    if (h, w) != tuple(original.shape[-2:]):
        print(
            f"cropped {args.image} from {original.shape[2]}x{original.shape[1]} to {w}x{h} "
            f"(network needs multiples of its scale factor)",
            file=sys.stderr,
        )
    print(
        f"final PSNR {s['final_psnr']:.2f} dB at iteration {s['iterations_run']}; "
        f"oracle {s['best_psnr']:.2f} dB at {s['best_iteration']}; "
        + (
            f"auto-stop {s['stop_psnr']:.2f} dB at {s['stop_iteration']}; "
            if s["stop_iteration"] is not None
            else "auto-stop did not fire; "
        )
        + f"backtracked {s['fallbacks']} time{'s' * (s['fallbacks'] != 1)}; "
        + f"{s['ms_per_iteration']:.1f} ms/iteration"
    )
    print(f"results in {args.out}/ (final.png, metrics.csv, curves.png, summary.json; fit {spec.key} in its store)")
    return 0


def add_manifest_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("manifest", help="check a manifest, or print its JSON Schema")
    msub = p.add_subparsers(dest="action", required=True)
    v = msub.add_parser("validate", help="report every error with its field path and line; exit 2 if any")
    v.add_argument("manifest", help="manifest file or URI (s3://…)")
    msub.add_parser("schema", help="print the manifest JSON Schema (for editor completion)")


def add_sweep_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("sweep", help="plan, run, inspect and record sweeps")
    ssub = p.add_subparsers(dest="action", required=True)
    for name, text in [
        ("plan", "how many fits, how many already done or failed, and the work left"),
        ("run", "run every fit that storage does not hold yet"),
        ("status", "counts by state, failures by reason, and where results are"),
        ("sync-mlflow", "log to MLflow every stored fit it lacks (no duplicates)"),
        ("collect", "gather all fit summaries into one Parquet file"),
        ("forget", "make done fits not done, so that the next run computes them again"),
    ]:
        q = ssub.add_parser(name, help=text, description=text)
        q.add_argument("manifest", help="manifest file or URI (s3://…)")
        q.add_argument(
            "--set",
            action="append",
            default=[],
            dest="overrides",
            metavar="FIELD.PATH=VALUE",
            help="override a manifest field without editing it, e.g. resources.num_gpus=0 (VALUE is YAML); "
            "validated like the file; settings of the fits change their keys, resources do not; repeatable",
        )
        if name == "run":
            q.add_argument("--address", help="Ray cluster address (default: $RAY_ADDRESS, else a local cluster)")
            q.add_argument("--retry-failed", action="store_true", help="also rerun fits recorded as failed")
            q.add_argument(
                "--local",
                action="store_true",
                help="run the fits one after another in this process: no Ray, no MLflow (a machine "
                "with PyTorch only); done fits are skipped, so calling again goes on",
            )
            q.add_argument(
                "--where",
                action="append",
                default=[],
                metavar="FIELD=VALUE",
                help="--local: only fits whose spec field equals VALUE (numbers as numbers), or "
                "contains TEXT with FIELD~TEXT; repeat to require several (fields: dip sweep plan)",
            )
            q.add_argument("--store", help="--local: results folder or URI instead of the manifest's storage")
            q.add_argument("--device", default="cpu", help="--local: cpu, cuda, cuda:1, …")
            q.add_argument(
                "--budget-s", type=float, default=float("inf"), help="--local: start no new fit after this many seconds"
            )
        if name == "forget":
            q.add_argument("keys", nargs="+", metavar="KEY", help="fit keys (dip sweep plan, summary.parquet)")
        if name == "collect":
            q.add_argument("--out", help="output URI (default: <storage>/summary.parquet)")
            q.add_argument(
                "--full", action="store_true", help="read every done marker, not only those the output file lacks"
            )


def add_submit_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "submit",
        help="run a sweep as a job on a Ray cluster (Jobs API)",
        description="Submit 'dip sweep run MANIFEST' to a Ray cluster and print the job id. "
        "Submitting a sweep that is running reports that job; after a stop, "
        "submitting again resumes. The token comes from RAY_AUTH_TOKEN, "
        "RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token.",
    )
    p.add_argument("manifest", help="manifest URI the cluster can read (s3://…) or a local file to upload")
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://127.0.0.1:8265")
    p.add_argument("--working-dir", help="upload this folder (holding the manifest) and run its code")


def run_submit(args: argparse.Namespace) -> int:
    from pipeline.jobs import submit
    from pipeline.sources import read_manifest

    sub = submit(read_manifest(args.manifest), args.manifest, args.address, args.working_dir)
    if sub.new:
        print(f"submitted {sub.job_id}")
    else:
        print(f"{sub.job_id} is already {sub.status.lower()}; not submitted again")
    print(
        f"follow: ray job logs --follow {sub.job_id} --address {args.address}\n"
        f"stop:   ray job stop {sub.job_id} --address {args.address}\n"
        f"status: dip sweep status {args.manifest}"
    )
    return 0


def add_report_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "report",
        help="tables and figures of a sweep, from stored results",
        description="Write the papers' tables (Markdown, CSV) and figures (PNG) of a sweep.",
    )
    p.add_argument("source", help="a manifest (.yaml/.yml, a path or URI such as s3://…) or a storage URI/path")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<sweep name>)")
    p.add_argument(
        "--explorer-fits",
        type=explorer_fits,
        default=argparse.SUPPRESS,  # the report's own (pipeline.explorer.EXPLORER_FITS)
        metavar="N",
        help="write the trajectory explorer's data of at most N fits, spread over the sweep, or 'all' "
        "(default 2,000; a fit's data is about 0.1-1.2 MB and 30 ms); every fit is in its table",
    )
    p.add_argument(
        "--mlflow",
        action="store_true",
        help="also store the report as artifacts of the sweep's MLflow run (source: a manifest)",
    )


def explorer_fits(text: str) -> int | None:
    """--explorer-fits: a count of fits, or 'all' (None)."""
    if text == "all":
        return None
    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"not a number of fits or 'all': {text!r}")
    return int(text)


def run_report(args: argparse.Namespace) -> int:
    from pipeline.report import write_report
    from pipeline.sources import is_manifest, read_manifest

    if args.mlflow and not is_manifest(args.source):
        raise UserError(f"--mlflow needs a manifest (it names the MLflow experiment), got {args.source}")
    out = args.out or Path("reports") / Path(str(args.source).rstrip("/")).stem
    index = write_report(args.source, out, **({"explorer_fits": args.explorer_fits} if "explorer_fits" in args else {}))
    print(f"report written: {index}")
    if args.mlflow:
        from pipeline.sweep import publish_report

        run = publish_report(read_manifest(args.source), out)
        print(f"report logged to MLflow run {run} (artifacts: report/)")
    return 0


def run_manifest(args: argparse.Namespace) -> int:
    from pipeline.manifest import json_schema
    from pipeline.sources import expand_specs, read_manifest

    if args.action == "schema":
        print(json.dumps(json_schema(), indent=2))
        return 0
    manifest = read_manifest(args.manifest)
    specs = expand_specs(manifest)
    print(f"{args.manifest}: valid, {len(specs)} fits")
    return 0


def run_local(args: argparse.Namespace, manifest: Manifest) -> int:
    """`dip sweep run --local`: without importing Ray or MLflow (pipeline.sweep does)."""
    from pipeline import local
    from pipeline.locations import location_problem

    if args.store and (problem := location_problem(args.store)):
        raise UserError(f"--store: {problem}")
    manifest.storage = args.store or manifest.storage
    from pipeline.sources import expand_specs

    outcome = local.run_local(manifest, expand_specs(manifest), args.where, args.device, args.budget_s)
    print(
        f"sweep {manifest.name}: {outcome.done} of {outcome.selected} selected fits done, "
        f"{outcome.failed} failed, {outcome.left} left → {manifest.storage}"
    )
    return 1 if outcome.failed else 0


def run_sweep_command(args: argparse.Namespace) -> int:
    from pipeline.sources import read_manifest

    manifest = read_manifest(args.manifest, args.overrides)
    if args.action == "run" and args.local:
        return run_local(args, manifest)
    if args.action == "run" and (args.where or args.store or args.device != "cpu" or args.budget_s != float("inf")):
        raise UserError("--where, --store, --device and --budget-s apply to --local runs only")
    from pipeline import sweep

    if args.action == "plan":
        plan = sweep.make_plan(manifest)
        todo = plan.todo()
        print(
            f"sweep {manifest.name}: {len(plan.specs)} fits · {len(plan.done)} done · {len(plan.failed)} failed · "
            f"{len(todo)} to run · work ≈ {sweep.work_estimate(todo):.3g} iteration·pixels · storage {manifest.storage}"
        )
    elif args.action == "run":
        outcome = sweep.run_sweep(manifest, args.address, args.retry_failed)
        print(
            f"sweep {manifest.name}: {outcome.done} fits done, {outcome.failed} failed, "
            f"{outcome.skipped} already done, in {outcome.seconds:.0f} s → {manifest.storage}"
        )
        for key, reason in list(outcome.failures.items())[:10]:
            print(f"  failed {key}: {reason}")
        return 1 if outcome.failed else 0
    elif args.action == "status":
        st = sweep.status(manifest)
        print(
            f"sweep {st['sweep']}: {st['fits']} fits · {st['done']} done · {st['failed']} failed · "
            f"{st['pending']} pending"
        )
        if st["failures_read"] < st["failed"]:
            print(f"  reasons of {st['failures_read']} of the {st['failed']} failed fits (spread over their keys):")
        for reason, count in st["failures"].items():
            print(f"  {count} × {reason}")
        print(f"results: {st['storage']}\nmlflow:  {st['mlflow']}")
    elif args.action == "sync-mlflow":
        added, present = sweep.sync_mlflow(manifest)
        print(f"MLflow: logged {added} missing fits; {present} were already there")
    elif args.action == "collect":
        out, added = sweep.collect(manifest, args.out, args.full)
        print(f"wrote {out}; metrics of {added} new fit(s) added to the query dataset (dip query)")
    elif args.action == "forget":
        forgotten = sweep.open_store(manifest).forget(args.keys)
        for key in sorted(set(args.keys) - forgotten):
            print(f"  {key}: not done in {manifest.storage}")
        print(f"forgot {len(forgotten)} fit(s); the next 'dip sweep run' computes them again")
        return 0 if forgotten == set(args.keys) else 1
    return 0


def add_reproduce_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "reproduce",
        help="run a folder of manifests, report each, and judge the papers' claims",
        description="Run every manifest of a folder as a resumable sweep, write its report, and gather the "
        "papers' claims with their verdicts and each manifest's cost into one page.",
    )
    p.add_argument("folder", type=Path, help="a folder of manifests, e.g. manifests/medium")
    p.add_argument("--out", type=Path, default=None, help="output folder (default: reports/<folder name>)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: a local cluster)")


def run_reproduce(args: argparse.Namespace) -> int:
    from pipeline.reproduce import reproduce

    index = reproduce(args.folder, args.out or Path("reports") / args.folder.name, args.address)
    print(f"reproduction written: {index}")
    return 0


def add_query_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "query",
        help="answer SQL over a sweep's fits and per-iteration metrics (DuckDB)",
        description="Run SQL over two views of a collected sweep: fits (one row per fit: the summary "
        "columns) and metrics (one row per fit and logged iteration: key, the spec columns, iteration "
        "and every metric). Run 'dip sweep collect' first; docs/storage.md has examples.",
    )
    p.add_argument("source", help="manifest or storage root (path or URI)")
    p.add_argument("sql", help='e.g. "SELECT lam, iteration, avg(fbc_5) FROM metrics GROUP BY ALL ORDER BY ALL"')
    p.add_argument("--out", type=Path, default=None, help="also write the answer here (.csv or .parquet)")


def run_query(args: argparse.Namespace) -> int:
    import pandas as pd

    from pipeline.query import query
    from pipeline.sources import open_store

    if args.out and args.out.suffix not in (".csv", ".parquet"):
        raise UserError(f"--out {args.out}: write the answer to a .csv or .parquet file")
    answer = query(open_store(args.source), args.sql)
    if args.out and args.out.suffix == ".csv":
        answer.to_csv(args.out, index=False)
    elif args.out:
        answer.to_parquet(args.out)
    with pd.option_context("display.width", 200, "display.max_columns", 30):
        print(answer.to_string(max_rows=60, index=False))
    print(f"({len(answer)} row(s))")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dip", description="Deep-image-prior spectral-bias studies.")
    parser.add_argument("--debug", action="store_true", help="show the traceback of expected errors too")
    sub = parser.add_subparsers(dest="command", required=True)
    add_fit_parser(sub)
    add_manifest_parser(sub)
    add_sweep_parser(sub)
    add_submit_parser(sub)
    add_report_parser(sub)
    add_reproduce_parser(sub)
    add_query_parser(sub)
    return parser


COMMANDS = {
    "fit": run_fit,
    "manifest": run_manifest,
    "sweep": run_sweep_command,
    "submit": run_submit,
    "report": run_report,
    "reproduce": run_reproduce,
    "query": run_query,
}


def main(argv: list[str] | None = None) -> int:
    from dipmodel.fit import FitDivergedError

    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", UserWarning)
            warnings.showwarning = lambda message, *_, **__: print(f"dip: warning: {message}", file=sys.stderr)
            return COMMANDS[args.command](args)
    except DipError as err:
        if args.debug:
            traceback.print_exc()
        print(f"dip: error: {err}", file=sys.stderr)
        return 2
    except FitDivergedError as err:  # the loss became NaN: the message names the iteration
        if args.debug:
            traceback.print_exc()
        print(f"dip: fit failed: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into head & co.
        sys.stderr.close()
        return 0
    except Terminated:
        print("dip: terminated", file=sys.stderr)
        return 143
    except KeyboardInterrupt:
        print("dip: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
