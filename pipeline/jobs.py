"""Sweeps as Ray jobs: `dip submit` sends `dip sweep run MANIFEST` to a cluster's Jobs API.

The job runs the same driver as a local `dip sweep run`, on the cluster's head, so resume,
status and the MLflow backfill work exactly as they do locally: storage is the source of truth.
The submission id is derived from the manifest's content (`dip-<name>-<hash>`), an idempotency
key: submitting a sweep that is already running reports that job instead of starting a second
driver; after a job stopped or failed, the next submission gets the next id (`…-2`, `…-3`) and
resumes from storage. Clients authenticate with Ray's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH
or ~/.ray/auth_token), which the Jobs API client sends as a bearer header.
"""

from __future__ import annotations

import hashlib
import json
import shlex
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.locations import is_remote, local_path
from pipeline.manifest import Manifest
from pipeline.messages import DipError, UserError, one_line

MANIFEST_NAME = "manifest.yaml"  # the manifest's name inside an uploaded working directory
# A head whose job agent is not registered yet answers HTTP 500 "No available agent to submit
# job, please try again later" (a cluster that just started, or an agent restarting).
AGENT_WAIT_S = 60.0


class SubmitError(DipError, RuntimeError):
    """The cluster could not be reached or refused the job; the message is one line."""


@dataclass
class Submission:
    job_id: str
    status: str  # the job's status as the Jobs API reports it
    new: bool  # False when the same sweep was already running and nothing was submitted


def base_job_id(manifest: Manifest) -> str:
    """`dip-<name>-<8 hex>`: the same resolved manifest always has the same id."""
    content = json.dumps(manifest.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return f"dip-{manifest.name}-{hashlib.sha256(content.encode()).hexdigest()[:8]}"


def check_submittable(manifest: Manifest) -> None:
    """A sweep run by a job must store its results where every node and the user can reach them."""
    if not manifest.written("storage"):
        raise UserError(
            f"{manifest.name}: set storage (e.g. s3://bucket/results/{manifest.name}); the default "
            f"results/ folder would be inside the job's temporary working directory"
        )


def submit(manifest: Manifest, location: str, address: str, working_dir: str | None = None) -> Submission:
    """Submit `dip sweep run` for the manifest at `location` (a URI the cluster reads, or a local file).

    A local manifest travels in the job's working directory: a folder holding only the
    manifest (the code is the cluster image's), or `working_dir` (code to upload with it; the
    manifest must be inside it, and the job then runs that code with `python -m pipeline.cli`).
    """
    from ray.job_submission import JobStatus, JobSubmissionClient

    check_submittable(manifest)
    upload: tempfile.TemporaryDirectory[str] | None = None
    runtime_env: dict[str, Any] = {}
    program = "dip"
    if is_remote(location):
        target = location
    elif working_dir is not None:
        root, path = Path(working_dir).resolve(), Path(local_path(location)).resolve()
        if not path.is_relative_to(root):
            raise UserError(f"{location} is not inside the working directory {working_dir}")
        runtime_env["working_dir"] = str(root)
        target, program = path.relative_to(root).as_posix(), "python -m pipeline.cli"
    else:
        upload = tempfile.TemporaryDirectory(prefix="dip-submit-")
        shutil.copyfile(local_path(location), Path(upload.name) / MANIFEST_NAME)
        runtime_env["working_dir"] = upload.name
        target = MANIFEST_NAME
    try:
        try:
            client = JobSubmissionClient(address)
        except (ConnectionError, RuntimeError, ValueError) as err:
            raise SubmitError(f"cannot reach the Ray Jobs API at {address}: {one_line(err)}") from None
        base = base_job_id(manifest)
        previous = {
            job.submission_id: job.status
            for job in client.list_jobs()
            if job.submission_id and (job.submission_id == base or job.submission_id.startswith(base + "-"))
        }
        running = [job_id for job_id, status in previous.items() if not status.is_terminal()]
        if running:
            return Submission(running[0], str(previous[running[0]]), new=False)
        job_id = base if not previous else f"{base}-{len(previous) + 1}"
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                client.submit_job(
                    entrypoint=f"{program} sweep run {shlex.quote(target)}",
                    submission_id=job_id,
                    runtime_env=runtime_env or None,
                    metadata={"dip.sweep": manifest.name},
                )
                break
            except RuntimeError as err:
                if "try again later" not in str(err) or time.monotonic() > deadline:
                    raise SubmitError(f"{address} refused job {job_id}: {one_line(err)}") from None
                time.sleep(2)
    finally:
        if upload is not None:
            upload.cleanup()
    return Submission(job_id, str(JobStatus.PENDING), new=True)
