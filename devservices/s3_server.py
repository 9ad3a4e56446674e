"""moto's S3 server on 127.0.0.1: the one S3 of the tests and the benchmarks."""

from __future__ import annotations

import logging
import socket
import subprocess
import sys
import uuid
from collections import Counter
from typing import Any

from devservices.loopback import free_port, wait_until


class S3Server:
    """moto's S3 server on a fixed loopback port, so it can be stopped and started again.

    In a thread of this process (the default) its buckets survive a restart. With ``own_process``
    it runs as `python -m moto.server` instead, so that a benchmark's client does not share the
    server's GIL; a restart then starts empty.
    """

    def __init__(self, own_process: bool = False, timeout: float = 60) -> None:
        self.own_process = own_process
        self.timeout = timeout
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.server: Any = None
        if not own_process:
            logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no log line per request
        self.restart()

    def restart(self) -> None:
        """Start it (again) on its port; returns once it accepts connections."""
        if self.own_process:
            command = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)]
            self.server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        else:
            from moto.server import ThreadedMotoServer

            self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)
            self.server.start()
        wait_until(self._answers, self.timeout, f"moto's S3 server on port {self.port}", 0.2)

    def _answers(self) -> bool:
        if self.own_process and self.server.poll() is not None:
            raise RuntimeError(f"moto's S3 server on port {self.port} exited with {self.server.returncode}")
        with socket.socket() as sock:
            return sock.connect_ex(("127.0.0.1", self.port)) == 0

    def stop(self) -> None:
        if self.own_process:
            self.server.terminate()
            self.server.wait()
        else:
            self.server.stop()

    def options(self) -> dict[str, Any]:
        """fsspec storage options that reach this server."""
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.endpoint}}

    def fs(self) -> Any:
        import s3fs

        return s3fs.S3FileSystem(skip_instance_cache=True, use_listings_cache=False, **self.options())

    def versioned_bucket(self) -> str:
        """A new bucket with versioning on; returns its name."""
        bucket = f"dip-{uuid.uuid4().hex[:10]}"
        fs = self.fs()
        fs.mkdir(bucket)
        fs.call_s3("put_bucket_versioning", Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
        return bucket

    def versions(self, bucket: str, prefix: str) -> Counter[str]:
        """How many versions each object under the prefix has (written once: 1)."""
        counts: Counter[str] = Counter()
        token: dict[str, str] = {}
        while True:
            page = self.fs().call_s3("list_object_versions", Bucket=bucket, Prefix=prefix, **token)
            counts.update(v["Key"] for v in page.get("Versions", []))
            if not page.get("IsTruncated"):
                return counts
            token = {"KeyMarker": page["NextKeyMarker"], "VersionIdMarker": page["NextVersionIdMarker"]}
