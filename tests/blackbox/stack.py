"""Helpers for the black-box tests: locate the stack installed by scripts/setup-stack.sh and
run throwaway FerretDB (SQLite backend) servers.

Only the standard library and pymongo are used.
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Optional

REPO_DIR = Path(__file__).resolve().parents[2]
# Same resolution as scripts/setup-stack.sh: $STACK_DIR or <repo>/.stack
STACK_DIR = Path(os.environ.get("STACK_DIR") or (REPO_DIR / ".stack")).resolve()

OPLOG_SIZE = 536870912


def bin(name: str) -> str:  # noqa: A001 - the name is part of the fixture API
    """Absolute path of a binary installed by setup-stack.sh ($STACK_DIR/bin/<name>)."""
    return str(STACK_DIR / "bin" / name)


def has_bin(name: str) -> bool:
    p = STACK_DIR / "bin" / name
    return p.is_file() and os.access(p, os.X_OK)


# mongo-tools releases installed by setup-stack.sh: the current one in $STACK_DIR/bin, and the newest whose
# mongorestore FerretDB 1.24 accepts inserts from (later ones send `bypassEmptyTsReplacement`, which it refuses).
MONGO_TOOLS_CURRENT = "100.18.0"
MONGO_TOOLS_FOR_FERRETDB = "100.11.0"


def in_ci() -> bool:
    """Under CI=true no test may pass by skipping."""
    return os.environ.get("CI") == "true"


def mongorestore_for_ferretdb() -> str:
    """The mongorestore to restore INTO FerretDB with ($DDSVAULT_MONGORESTORE_FERRETDB, else
    $STACK_DIR/mongo-tools-100.11.0/mongorestore). bin("mongorestore") (100.18.0) serves every check that does
    not insert into FerretDB."""
    return os.environ.get("DDSVAULT_MONGORESTORE_FERRETDB") or str(
        STACK_DIR / f"mongo-tools-{MONGO_TOOLS_FOR_FERRETDB}" / "mongorestore")


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def mongo_tools_unavailable_reason() -> Optional[str]:
    """None if both mongo-tools releases are installed, otherwise why they are not."""
    missing = [p for p in (bin("mongodump"), bin("mongorestore"), mongorestore_for_ferretdb()) if not _executable(p)]
    if not missing:
        return None
    mark = STACK_DIR / "mongo-tools.unavailable"
    detail = mark.read_text(errors="replace").strip() if mark.is_file() else "run scripts/setup-stack.sh"
    return f"mongo-tools not installed ({', '.join(missing)} missing): {detail}"


def tool_version(path: str) -> str:
    """What `mongorestore --version` / `mongodump --version` reports, e.g. 100.18.0."""
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30).stdout
    first = out.splitlines()[0] if out else ""
    return first.split("version: ", 1)[1].strip() if "version: " in first else ""


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as e:
        return f"<cannot read {path}: {e}>"


def _terminate(p: Optional[subprocess.Popen], timeout: float) -> None:
    """SIGTERM, then SIGKILL after `timeout`; nothing if the process is gone."""
    if p is None or p.poll() is not None:
        return
    p.terminate()
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout)


class _PortInUse(RuntimeError):
    pass


class FerretDB:
    """A FerretDB v1.24 process with the SQLite backend, listening on 127.0.0.1:<free port>.

    Usable as a context manager or started by the constructor and stopped with stop():

        with FerretDB(tmp_path / "src", repl_set_name="rs0", create_oplog=True) as f:
            f.client().db.c.insert_one({"a": 1})

    Layout under `tmpdir`: data/ (SQLite files, `<db>.sqlite`), state/ (state.json) and
    ferretdb.log (stdout+stderr).
    """

    START_TIMEOUT = 30.0

    def __init__(self, tmpdir, repl_set_name: Optional[str] = None, create_oplog: bool = False,
                 port: Optional[int] = None, log_level: str = "warn", extra_args=()):
        self.dir = Path(tmpdir).resolve()
        self.data_dir = self.dir / "data"
        self.state_dir = self.dir / "state"
        self.log_path = self.dir / "ferretdb.log"
        self.repl_set_name = repl_set_name
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.proc: Optional[subprocess.Popen] = None
        self._clients = []
        self._log_level = log_level
        self._extra_args = list(extra_args)
        self._set_port(port or free_port())
        for attempt in range(3):
            try:
                self.start()
                break
            except _PortInUse:
                if port is not None or attempt == 2:
                    raise
                self._set_port(free_port())  # lost the race for the port: pick another
        if create_oplog:
            self.create_oplog()

    def _set_port(self, port: int) -> None:
        self.port = port
        self.uri = f"mongodb://127.0.0.1:{port}/"
        self.args = [
            bin("ferretdb"),
            "--handler=sqlite",
            f"--sqlite-url=file:{self.data_dir}/",
            f"--listen-addr=127.0.0.1:{port}",
            f"--state-dir={self.state_dir}",
            "--telemetry=disable",
            "--debug-addr=-",
            f"--log-level={self._log_level}",
        ]
        if self.repl_set_name:
            self.args.append(f"--repl-set-name={self.repl_set_name}")
        self.args.extend(self._extra_args)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> "FerretDB":
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not has_bin("ferretdb"):
            raise RuntimeError(f"{bin('ferretdb')} not found: run scripts/setup-stack.sh")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.dir)
        finally:
            log.close()
        self._wait_ready()
        return self

    def _wait_ready(self) -> None:
        import pymongo
        from pymongo.errors import PyMongoError

        deadline = time.monotonic() + self.START_TIMEOUT
        last_err: Optional[BaseException] = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                err = _PortInUse if "address already in use" in _tail(self.log_path, 5) else RuntimeError
                raise err(
                    f"ferretdb exited with code {self.proc.returncode} during startup\n"
                    f"command: {' '.join(self.args)}\nlog tail ({self.log_path}):\n{_tail(self.log_path)}")
            c = pymongo.MongoClient(self.uri, directConnection=True, serverSelectionTimeoutMS=500,
                                    connectTimeoutMS=500)
            try:
                c.admin.command("ping")
                return
            except PyMongoError as e:
                last_err = e
            finally:
                c.close()
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(
            f"ferretdb did not answer ping on {self.uri} within {self.START_TIMEOUT}s ({last_err!r})\n"
            f"command: {' '.join(self.args)}\nlog tail ({self.log_path}):\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        for c in self._clients:
            try:
                c.close()
            except Exception:  # noqa: BLE001
                pass
        self._clients = []
        p, self.proc = self.proc, None
        _terminate(p, timeout)

    def restart(self) -> "FerretDB":
        """Stop and start again on the same port and data (FerretDB reads the DB list at startup)."""
        self.stop()
        return self.start()

    def __enter__(self) -> "FerretDB":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # best effort: never leave a server behind
        try:
            self.stop(timeout=2)
        except Exception:  # noqa: BLE001
            pass

    # ------------------------------------------------------------------ helpers
    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def client(self, **kwargs):
        """A pymongo MongoClient (directConnection=True), closed by stop()."""
        import pymongo

        kwargs.setdefault("directConnection", True)
        kwargs.setdefault("serverSelectionTimeoutMS", 5000)
        c = pymongo.MongoClient(self.uri, **kwargs)
        self._clients.append(c)
        return c

    def create_oplog(self, size: int = OPLOG_SIZE) -> None:
        """Create the capped local.oplog.rs that turns on FerretDB's oplog emulation."""
        c = self.client()
        if "oplog.rs" not in c.local.list_collection_names():
            c.local.create_collection("oplog.rs", capped=True, size=size)

    def log_tail(self, lines: int = 40) -> str:
        return _tail(self.log_path, lines)

    def __repr__(self) -> str:
        return f"FerretDB(uri={self.uri!r}, data_dir={str(self.data_dir)!r}, running={self.running})"


def current_mongorestore_reads_every_namespace(uri: str, archive, namespaces, gzip: bool = False) -> str:
    """Proves that mongorestore 100.18.0 ($STACK_DIR/bin) reads every namespace of a plain or gzip archive, without
    inserting (FerretDB 1.24 refuses the inserts of mongorestore >= 100.12.0):

    1. `--dryRun -v`: it parses the magic number, the prelude header and every namespace's metadata and makes a
       restore intent for each (`found collection <ns> bson to restore`);
    2. `--nsInclude` of a database not in the archive: every namespace is muted and its demultiplexer still reads the
       whole archive block by block: every namespace header (strict decoder), every document's length framing and
       trailing NUL, every EOF block (`demux checksum for namespace <ns> was not calculated`, at -vvvvv) and the end
       check that every prelude namespace was closed. Muted namespaces skip the CRC-64 comparison: the restore with
       mongorestore_for_ferretdb() checks those.

    Returns both logs; raises AssertionError with the log when mongorestore fails or misses a namespace."""
    logs = []
    for what, args, line in (
            ("dry run", ["--dryRun", "-v"], "found collection `{ns}` bson to restore"),
            ("full read", ["--nsInclude=ddsvault-no-such-db.*", "-vvvvv"],
             "demux checksum for namespace `{ns}` was not calculated")):
        cmd = [bin("mongorestore"), f"--uri={uri}", f"--archive={archive}", *args] + (["--gzip"] if gzip else [])
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        log = r.stdout + r.stderr
        assert r.returncode == 0, f"mongorestore {what} of {archive} failed:\n{log[-3000:]}"
        for ns in namespaces:
            assert line.format(ns=ns) in log, f"mongorestore {what}: {ns} not read:\n{log[-3000:]}"
        logs.append(log)
    return "\n".join(logs)


class MinIO:
    """A MinIO server ($STACK_DIR/bin/minio, built by scripts/setup-minio.sh) on 127.0.0.1:<free port> with a
    temporary data directory: the real S3 server of the S3 repository tests. `bucket()` creates a bucket with
    object lock enabled (which also turns versioning on, as S3 requires)."""

    START_TIMEOUT = 60.0
    USER = "ddsvault-minio"
    PASSWORD = "ddsvault-minio-secret"

    def __init__(self, tmpdir):
        self.dir = Path(tmpdir)
        self.data_dir = self.dir / "minio-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = self.dir / "minio.log"
        self.proc: Optional[subprocess.Popen] = None
        self.port = free_port()
        self.console_port = free_port()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "MinIO":
        if self.proc is not None and self.proc.poll() is None:
            return self
        if not has_bin("minio"):
            raise RuntimeError(f"{bin('minio')} not found: run scripts/setup-stack.sh")
        env = dict(os.environ, MINIO_ROOT_USER=self.USER, MINIO_ROOT_PASSWORD=self.PASSWORD, MINIO_BROWSER="off")
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(
                [bin("minio"), "server", str(self.data_dir), "--address", f"127.0.0.1:{self.port}",
                 "--console-address", f"127.0.0.1:{self.console_port}"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=self.dir)
        finally:
            log.close()
        import urllib.request
        deadline = time.monotonic() + self.START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"minio exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/minio/health/ready", timeout=1) as r:
                    if r.status == 200:
                        return self
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"minio not ready within {self.START_TIMEOUT}s:\n{_tail(self.log_path)}")

    def stop(self, timeout: float = 10.0) -> None:
        p, self.proc = self.proc, None
        _terminate(p, timeout)

    def kill(self) -> None:
        """SIGKILL: the server dies mid-request."""
        p, self.proc = self.proc, None
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()

    def __enter__(self) -> "MinIO":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def __del__(self):  # best effort: never leave a server behind
        try:
            self.stop(timeout=2)
        except Exception:  # noqa: BLE001
            pass

    def client(self, secret: Optional[str] = None):
        """A boto3 S3 client for this server."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.USER, aws_secret_access_key=secret or self.PASSWORD,
                            config=Config(s3={"addressing_style": "path"}, retries={"max_attempts": 2}))

    def bucket(self, name: str, object_lock: bool = True) -> str:
        self.client().create_bucket(Bucket=name, ObjectLockEnabledForBucket=object_lock)
        return name

    def keys(self, bucket: str, prefix: str = "") -> dict:
        """{key: size} of every object under prefix."""
        out = {}
        for page in self.client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for o in page.get("Contents", []):
                out[o["Key"]] = o["Size"]
        return out

    def multipart_uploads(self, bucket: str, prefix: str = "") -> list:
        """Unfinished multipart uploads (their parts are still stored)."""
        r = self.client().list_multipart_uploads(Bucket=bucket, Prefix=prefix)
        return [(u["Key"], u["UploadId"]) for u in r.get("Uploads", [])]

    def repository_config(self, bucket: str, prefix: str = "ddsvault", **extra) -> str:
        """The `[repository]` section of a ddsvault configuration using this server."""
        lines = ["[repository]", f'url = "s3://{bucket}/{prefix}"', f'endpoint = "{self.endpoint}"',
                 'region = "us-east-1"', f'access_key_id = "{self.USER}"',
                 f'secret_access_key = "{self.PASSWORD}"', "allow_http = true"]
        for k, v in extra.items():
            lines.append(f"{k} = {v}")
        return "\n".join(lines) + "\n"


def pg_bin_dir() -> Optional[Path]:
    """The directory of initdb/pg_ctl: $DDSVAULT_PG_BIN, else the newest /usr/lib/postgresql/<v>/bin."""
    if os.environ.get("DDSVAULT_PG_BIN"):
        return Path(os.environ["DDSVAULT_PG_BIN"])
    root = Path("/usr/lib/postgresql")
    found = sorted((int(p.name), p / "bin") for p in root.glob("*") if p.name.isdigit() and (p / "bin/initdb").is_file()) \
        if root.is_dir() else []
    return found[-1][1] if found else None


class PostgreSQL:
    """A throw-away PostgreSQL cluster (Debian's `postgresql` package, installed by scripts/setup-stack.sh): initdb in
    a temporary directory, pg_ctl start on 127.0.0.1:<free port>, trust authentication, superuser `ddsvault`.
    initdb refuses root, so under root the cluster runs as the `postgres` system user, which owns the directory."""

    def __init__(self, tmpdir):
        self.bin = pg_bin_dir()
        if self.bin is None:
            raise RuntimeError("PostgreSQL not installed (no /usr/lib/postgresql/*/bin/initdb): run scripts/setup-stack.sh")
        # Not under `tmpdir`: pytest's directories are private to the test's user, and the server may run as
        # `postgres`. A directory of its own in the system temp dir, removed by stop().
        del tmpdir
        self.dir = Path(tempfile.mkdtemp(prefix="ddsvault-pg-"))
        self.data = self.dir / "pgdata"
        self.log_path = self.dir / "postgres.log"
        self.run_as = "postgres" if os.geteuid() == 0 else None
        if self.run_as:
            shutil.chown(self.dir, user=self.run_as)
        self.port = 0
        self._tool("initdb", "-D", str(self.data), "-U", "ddsvault", "--auth=trust", "-E", "UTF8", "--no-sync")
        self.start()

    def _tool(self, name: str, *args: str) -> None:
        cmd = [str(self.bin / name), *args]
        if self.run_as:
            cmd = ["runuser", "-u", self.run_as, "--", *cmd]
        r = subprocess.run(cmd, cwd=self.dir, capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"{name} failed: {r.stdout}{r.stderr}\n{_tail(self.log_path)}")

    def start(self) -> "PostgreSQL":
        self.port = free_port()
        self._tool("pg_ctl", "-D", str(self.data), "-l", str(self.log_path), "-w", "start", "-o",
                   f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off")
        return self

    def stop(self) -> None:
        if self.port:
            self._tool("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
            self.port = 0
        shutil.rmtree(self.dir, ignore_errors=True)

    def url(self, db: str = "postgres", password: Optional[str] = None) -> str:
        auth = f"ddsvault:{password}" if password else "ddsvault"
        return f"postgres://{auth}@127.0.0.1:{self.port}/{db}"

    def create_database(self, name: str) -> str:
        self._tool("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "ddsvault", name)
        return self.url(name)

    def sql(self, db: str, statement: str) -> str:
        """Runs one statement with psql and returns its unaligned output."""
        r = subprocess.run([str(self.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "ddsvault",
                            "-d", db, "-A", "-t", "-c", statement], capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise RuntimeError(f"psql failed: {r.stderr}")
        return r.stdout.strip()

    def __enter__(self) -> "PostgreSQL":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
