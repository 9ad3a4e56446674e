"""MLflow records of sweeps and fits: one parent run per sweep, one nested run per fit.

Storage is the source of truth; MLflow is only for browsing. So every call here may fail with a
one-line ``TrackingError`` that callers report and carry on from (``dip sweep sync-mlflow``
backfills later), and HTTP retries/timeouts are kept short so a dead server cannot stall a sweep.

Runs are found again by tags rather than by id, because MLflow cannot take a caller-chosen run id
and a client retry of ``runs/create`` can leave a second, "ghost" run behind (mlflow#8238):
the sweep run carries ``dip.kind=sweep`` and ``dip.sweep=<name>``; a fit run carries
``dip.kind=fit``, ``dip.fit_key=<key>`` and ``mlflow.parentRunId``. A fit run is set FINISHED
only after everything else is logged, so FINISHED means complete.
"""

from __future__ import annotations

import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path

import mlflow
import numpy as np
import requests
import sqlalchemy.exc
from mlflow.entities import Metric, Param, Run, ViewType
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAM_VAL_LENGTH
from sqlalchemy.engine import make_url

from pipeline.messages import DipError, one_line

# Applied with setdefault, so a user's own settings win; MLflow reads them at every request
# (mlflow.utils.rest_utils.http_request). Its defaults (7 retries, 120 s) would let a dead
# server hold a fit for minutes; with these a call gives up after about 3 s when the port
# refuses connections and about 35 s when packets are dropped. Without the last one, every
# finished run costs an extra GET and prints its URL into the sweep's progress output.
ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "10",
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

PAGE_SIZE = 1000
FINISHED = "FINISHED"


class TrackingError(DipError, RuntimeError):
    """MLflow could not be reached or refused a request; the message is one line."""


def default_tracking_uri() -> str:
    """$MLFLOW_TRACKING_URI (a cluster's shared server), else the embedded store: a SQLite file
    in the working directory, next to the results."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path.cwd().resolve() / 'mlflow.db'}"


def _literal(value: str) -> str:
    """A string literal for an MLflow filter (its grammar has quotes but no escapes)."""
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    raise ValueError(f"cannot search MLflow for a value with both quote kinds: {value!r}")


def _param_text(value: object) -> str:
    return str(value)[:MAX_PARAM_VAL_LENGTH]


# MLflow's UI opens an experiment on the view its kind names; untagged, MLflow 3 guesses and shows
# an empty GenAI traces overview. A sweep's runs are model training runs.
EXPERIMENT_KIND = "mlflow.experimentKind"
TRAINING = "custom_model_development"


class Tracker:
    """Idempotent logging of sweeps and fits to one MLflow experiment.

    Uses its own ``MlflowClient`` (no fluent global state), so several trackers can coexist in
    one process. A ``tracking_uri`` of None means $MLFLOW_TRACKING_URI, else the embedded store.
    Construction does no I/O; the experiment is resolved (and created) on first use.
    """

    def __init__(self, tracking_uri: str | None, experiment: str) -> None:
        for name, value in ENV_DEFAULTS.items():
            os.environ.setdefault(name, value)
        self.tracking_uri = tracking_uri or default_tracking_uri()
        self.experiment = experiment
        self._client = mlflow.MlflowClient(self.tracking_uri)

    @contextmanager
    def _mlflow(self, action: str) -> Iterator[None]:
        """Turn any failure of MLflow or its transport into a one-line TrackingError."""
        try:
            yield
        except (MlflowException, requests.RequestException, sqlalchemy.exc.SQLAlchemyError, OSError) as exc:
            raise TrackingError(f"MLflow {action} failed ({self.tracking_uri}): {one_line(exc)}") from exc

    def _artifact_location(self) -> str | None:
        """For a SQLite store, keep artifacts beside the database rather than in ./mlruns of
        whatever directory the process happens to run in; servers choose their own."""
        if not self.tracking_uri.startswith("sqlite:"):
            return None
        database = make_url(self.tracking_uri).database
        return (Path(database).resolve().parent / "mlartifacts").as_uri() if database else None

    @cached_property
    def experiment_id(self) -> str:
        """The experiment's id, creating it on first use (tolerating a concurrent creator)."""
        with self._mlflow(f"opening experiment {self.experiment!r}"):
            found = self._client.get_experiment_by_name(self.experiment)
            if found is None:
                try:
                    location = self._artifact_location()
                    return self._client.create_experiment(
                        self.experiment, artifact_location=location, tags={EXPERIMENT_KIND: TRAINING}
                    )
                except MlflowException:  # another process created it first
                    found = self._client.get_experiment_by_name(self.experiment)
                    if found is None:
                        raise
        if found.lifecycle_stage != "active":
            raise TrackingError(f"MLflow experiment {self.experiment!r} is deleted: restore it or use another name")
        if EXPERIMENT_KIND not in found.tags:  # made before the tag was set, or by someone else
            with self._mlflow(f"tagging experiment {self.experiment!r}"):
                self._client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, TRAINING)
        return found.experiment_id

    def _search(self, filter_string: str) -> list[Run]:
        """All active runs of the experiment that match, oldest first, page by page."""
        runs: list[Run] = []
        token: str | None = None
        with self._mlflow("search"):
            while True:
                page = self._client.search_runs(
                    [self.experiment_id],
                    filter_string,
                    run_view_type=ViewType.ACTIVE_ONLY,
                    max_results=PAGE_SIZE,
                    order_by=["attributes.start_time ASC"],
                    page_token=token,
                )
                runs.extend(page)
                token = page.token
                if not token:
                    return runs

    def _children(self, parent_id: str, condition: str) -> list[Run]:
        return self._search(f"tags.mlflow.parentRunId = {_literal(parent_id)} AND {condition}")

    def sweep_run(self, sweep: str, params: dict[str, str]) -> str:
        """The sweep's parent run, found by tag or created; marked RUNNING again on a resume.

        Params are write-once in MLflow, so only those the run lacks are logged (a resumed
        sweep keeps the values of its first run)."""
        found = self._sweep_runs(sweep)
        with self._mlflow(f"recording sweep {sweep!r}"):
            if found:
                run = found[0]
                if run.info.status != "RUNNING":
                    self._client.update_run(run.info.run_id, status="RUNNING")
            else:
                run = self._client.create_run(
                    self.experiment_id, run_name=sweep, tags={"dip.sweep": sweep, "dip.kind": "sweep"}
                )
            missing = [Param(k, _param_text(v)) for k, v in params.items() if k not in run.data.params]
            self._client.log_batch(run.info.run_id, params=missing, synchronous=True)
        return run.info.run_id

    def logged_keys(self, parent_id: str) -> set[str]:
        """Fit keys whose runs under this sweep are complete (FINISHED)."""
        runs = self._children(parent_id, f"attributes.status = '{FINISHED}'")
        return {r.data.tags["dip.fit_key"] for r in runs if "dip.fit_key" in r.data.tags}

    def log_fit(
        self,
        parent_id: str,
        key: str,
        name: str,
        params: dict[str, object],
        summary: dict[str, float | int | None],
        metrics: dict[str, np.ndarray],
        images: dict[str, bytes],
        storage_uri: str,
        trajectory: Sequence[tuple[int, np.ndarray]] = (),
    ) -> str:
        """Record one stored fit as a nested run named ``name``, at most once per key (a tag);
        returns the run id.

        ``metrics`` holds 1-D columns of equal length, "iteration" giving the step of each row;
        every other column becomes a step metric. ``summary`` numbers are logged at step 0
        (None and NaN skipped). ``images`` maps a name to encoded bytes, stored under
        ``images/`` as ``<name>.png`` unless the name has its own suffix. Unfinished runs of the
        same key (a crash while logging, or client-retry ghosts) are deleted, and a FINISHED one
        is returned as it is. ``trajectory`` holds (iteration, picture) pairs, logged as the
        step-indexed image "trajectory", which the MLflow UI shows with a slider over the steps.
        """
        rows = self._metric_rows(summary, metrics)
        existing = self._children(parent_id, f"tags.dip.fit_key = {_literal(key)}")
        with self._mlflow(f"logging fit {key}"):
            for run in existing:
                if run.info.status != FINISHED:
                    self._client.delete_run(run.info.run_id)
            done = [r for r in existing if r.info.status == FINISHED]
            if done:
                return done[0].info.run_id
            run_id = self._client.create_run(
                self.experiment_id,
                run_name=name,
                tags={
                    "mlflow.parentRunId": parent_id,
                    "dip.kind": "fit",
                    "dip.fit_key": key,
                    "dip.storage_uri": storage_uri,
                },
            ).info.run_id
            # One call: the client splits it into requests within the server's limits
            # (≤ 1000 metrics, ≤ 100 params, ≤ 1000 entities each).
            self._client.log_batch(
                run_id, metrics=rows, params=[Param(k, _param_text(v)) for k, v in params.items()], synchronous=True
            )
            self._log_bytes(run_id, {n if Path(n).suffix else f"{n}.png": data for n, data in images.items()}, "images")
            for step, picture in trajectory:
                self._client.log_image(run_id, picture, key="trajectory", step=step, synchronous=True)
            self._client.set_terminated(run_id, FINISHED)
        return run_id

    @staticmethod
    def _metric_rows(summary: dict[str, float | int | None], metrics: dict[str, np.ndarray]) -> list[Metric]:
        """Summary numbers at step 0, then every value of every column at its iteration."""
        if "iteration" not in metrics:
            raise ValueError("metrics need an 'iteration' column")
        clash = set(summary) & set(metrics)
        if clash:
            raise ValueError(f"summary and per-iteration metrics share names: {sorted(clash)}")
        steps = np.asarray(metrics["iteration"]).astype(np.int64).tolist()
        now = int(time.time() * 1000)
        rows = [Metric(k, float(v), now, 0) for k, v in summary.items() if v is not None and not math.isnan(v)]
        for name, column in metrics.items():
            if name == "iteration":
                continue
            values = np.asarray(column, dtype=np.float64)
            if values.shape != (len(steps),):
                raise ValueError(f"metric column {name!r} has shape {values.shape}, expected ({len(steps)},)")
            rows.extend(Metric(name, v, now, s) for v, s in zip(values.tolist(), steps, strict=True))
        return rows

    def _log_bytes(self, run_id: str, files: dict[str, bytes], artifact_path: str) -> None:
        """Files given as bytes, stored as the run's artifacts under ``artifact_path``."""
        if not files:
            return
        with tempfile.TemporaryDirectory(prefix="dip-artifacts-") as tmp:
            for name, data in files.items():
                Path(tmp, name).write_bytes(data)
            self._client.log_artifacts(run_id, tmp, artifact_path=artifact_path)

    def log_sweep_files(self, parent_id: str, files: dict[str, bytes]) -> None:
        """What a browser of the sweep's run wants beside its fits (the manifest as it ran, the
        summary table), under ``sweep/``; a later call replaces files of the same name."""
        with self._mlflow("logging the sweep's files"):
            self._log_bytes(parent_id, files, "sweep")

    def log_sweep_folder(self, parent_id: str, folder: Path, artifact_path: str) -> None:
        """A folder (a written report) as the sweep run's artifacts under ``artifact_path``."""
        with self._mlflow(f"logging {folder}"):
            self._client.log_artifacts(parent_id, str(folder), artifact_path=artifact_path)

    def experiment_url(self) -> str:
        """Where a person browses the experiment: its runs, in the UI's model-training view. MLflow
        3's UI picks its view from the URL, else from the browser's last choice (GenAI by
        default), so the link says which. An embedded store is browsed through `mlflow ui`."""
        page = f"#/experiments/{self.experiment_id}/runs?workflowType=machine_learning"
        if self.tracking_uri.startswith(("http://", "https://")):
            return f"{self.tracking_uri.rstrip('/')}/{page}"
        return f"mlflow ui --backend-store-uri {self.tracking_uri} --host 127.0.0.1, then http://127.0.0.1:5000/{page}"

    def find_sweep_run(self, sweep: str) -> str | None:
        """The sweep's parent run id, or None; unlike `sweep_run` it neither creates nor reopens it."""
        found = self._sweep_runs(sweep)
        return found[0].info.run_id if found else None

    def _sweep_runs(self, sweep: str) -> list[Run]:
        """The parent runs tagged with this sweep's name, oldest first."""
        return self._search(f"tags.dip.sweep = {_literal(sweep)} AND tags.dip.kind = 'sweep'")

    def finish_sweep(self, parent_id: str, status: str = FINISHED) -> None:
        """Close the sweep's parent run (FINISHED, FAILED or KILLED)."""
        with self._mlflow("finishing sweep"):
            self._client.set_terminated(parent_id, status)
