"""Fixtures of the black-box suite: the real ddsvault binary, real FerretDB servers, the official SDKs."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Optional

import pytest

import stack

REPO = stack.REPO_DIR
TARGET_DIR = Path(os.environ.get("CARGO_TARGET_DIR") or (REPO / "target"))
DDSVAULT_BIN = os.environ.get("DDSVAULT_BIN") or str(TARGET_DIR / "debug" / "ddsvault")

ROOT_AK = ("LTAI5tTestRootKey0001", "root-secret-0001")
OPERATOR_AK = ("LTAI5tTestOperator001", "operator-secret-0001")
AUDITOR_AK = ("LTAI5tTestAuditor0001", "auditor-secret-0001")
DENIED_AK = ("LTAI5tTestDenied00001", "denied-secret-0001")
ACCOUNT_ID = "1234567890123456"
REGION = "cn-hangzhou"


class Ddsvault:
    """A running `ddsvault serve` process on a free port."""

    START_TIMEOUT = 60.0

    def __init__(self, workdir: Path, config_text: Optional[str], extra_args=()):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.dir / "ddsvault.toml" if config_text is not None else None
        if config_text is not None:
            self.config_path.write_text(config_text)
        self.extra_args = list(extra_args)
        self.proc: Optional[subprocess.Popen] = None
        self.stdout_lines: list[str] = []
        self.stderr_path = self.dir / "ddsvault.stderr.log"
        self.port: Optional[int] = None
        self.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> "Ddsvault":
        args = [DDSVAULT_BIN, "serve"]
        if self.config_path is not None:
            args += ["--config", str(self.config_path)]
        args += self.extra_args
        env = dict(os.environ)
        env.setdefault("DDSVAULT_LOG", "info")
        self.stdout_lines = []
        err = open(self.stderr_path, "ab")
        self.proc = subprocess.Popen(args, cwd=self.dir, stdout=subprocess.PIPE, stderr=err,
                                     stdin=subprocess.DEVNULL, env=env, text=True)
        err.close()
        ready = threading.Event()

        def pump():
            for line in self.proc.stdout:
                self.stdout_lines.append(line.rstrip("\n"))
                m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
                if m:
                    self.port = int(m.group(1))
                    ready.set()

        threading.Thread(target=pump, daemon=True).start()
        deadline = time.monotonic() + self.START_TIMEOUT
        while not ready.wait(0.1):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"ddsvault did not start; stdout={self.stdout_lines}\nstderr:\n{self.stderr()}")
        return self

    def stderr(self) -> str:
        try:
            return self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""

    def stop(self, timeout: float = 20.0) -> int:
        """SIGTERM and wait: the graceful path."""
        p = self.proc
        if p is None or p.poll() is not None:
            return p.returncode if p else 0
        p.send_signal(signal.SIGTERM)
        try:
            return p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            raise

    def kill(self) -> None:
        """SIGKILL: a crash."""
        p = self.proc
        if p is not None and p.poll() is None:
            p.kill()
            p.wait()


def config_text(data_dir: Path, instances: dict, extra: str = "") -> str:
    """A configuration with the test keys, RAM users and the given instances {id: (uri, storage_type)}."""
    lines = [
        'listen = "127.0.0.1:0"',
        f'region_id = "{REGION}"',
        f'account_id = "{ACCOUNT_ID}"',
        f'data_dir = "{data_dir}"',
        extra,
        "[[access_keys]]", f'id = "{ROOT_AK[0]}"', f'secret = "{ROOT_AK[1]}"', 'user = "root"',
        "[[access_keys]]", f'id = "{OPERATOR_AK[0]}"', f'secret = "{OPERATOR_AK[1]}"', 'user = "operator"',
        "[[access_keys]]", f'id = "{AUDITOR_AK[0]}"', f'secret = "{AUDITOR_AK[1]}"', 'user = "auditor"',
        "[[access_keys]]", f'id = "{DENIED_AK[0]}"', f'secret = "{DENIED_AK[1]}"', 'user = "nobody"',
        "[[ram_users]]", 'name = "operator"', 'policies = ["BackupRs1"]',
        "[[ram_users]]", 'name = "auditor"', 'policies = ["ReadOnly", "NoTasks"]',
        "[[ram_users]]", 'name = "nobody"', "policies = []",
        "[[ram_policies]]", 'name = "BackupRs1"',
        """document = '''{"Version":"1","Statement":[{"Effect":"Allow","Action":["dds:CreateBackup","dds:Describe*"],"Resource":"acs:dds:*:*:dbinstance/dds-rs1"}]}'''""",
        "[[ram_policies]]", 'name = "ReadOnly"',
        """document = '''{"Version":"1","Statement":[{"Effect":"Allow","Action":"dds:describe*","Resource":"*"},{"Effect":"Allow","Action":"dds:Describe*","Resource":"acs:dds:*:*:dbinstance/*"}]}'''""",
        "[[ram_policies]]", 'name = "NoTasks"',
        """document = '''{"Version":"1","Statement":[{"Effect":"Deny","Action":"dds:DescribeBackupTask?","Resource":"*"},{"Effect":"Deny","Action":"dds:DescribeBackupTask?","Resource":"acs:dds:*:*:dbinstance/*"}]}'''""",
    ]
    for iid, (uri, storage) in instances.items():
        lines += ["[[instances]]", f'id = "{iid}"', f'uri = "{uri}"', f'storage_type = "{storage}"']
    if "[scheduler]" not in extra:
        # Automatic backups would add jobs the tests do not expect; test_policy.py turns the scheduler on itself.
        lines += ["[scheduler]", "enabled = false"]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------- SDK clients

def tea_client(server: Ddsvault, ak=ROOT_AK, v1: bool = False):
    """alibabacloud-dds20151201 client; V3 signature by default, V1 with `v1=True`."""
    from alibabacloud_tea_openapi import models as open_api_models
    from alibabacloud_dds20151201.client import Client

    kwargs = dict(access_key_id=ak[0], access_key_secret=ak[1], endpoint=server.endpoint, protocol="http",
                  region_id=REGION, read_timeout=60000, connect_timeout=5000)
    if v1:
        kwargs["signature_algorithm"] = "v2"
    return Client(open_api_models.Config(**kwargs))


def acs_client(server: Ddsvault, ak=ROOT_AK):
    """aliyun-python-sdk-core AcsClient (V1 signature)."""
    from aliyunsdkcore.client import AcsClient

    return AcsClient(ak[0], ak[1], REGION, port=server.port, timeout=60, connect_timeout=5)


def acs_call(server: Ddsvault, request, ak=ROOT_AK):
    import json

    request.set_endpoint("127.0.0.1")
    return json.loads(acs_client(server, ak).do_action_with_exception(request))


def schedule_now_and_start_scheduler(server: Ddsvault, instance_ids, retention: int = 7):
    """Gives the instances a backup window opening this minute, today only (set while the server's scheduler is
    off, so that no default window takes a slot first), then restarts the server with its scheduler on. Returns
    the window's start."""
    import datetime

    from alibabacloud_dds20151201 import models as dds

    now = datetime.datetime.now(datetime.timezone.utc).replace(second=0, microsecond=0)
    window = f"{now:%H:%M}Z-{now + datetime.timedelta(hours=1):%H:%M}Z"
    day = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"][now.weekday()]
    tea = tea_client(server)
    for iid in instance_ids:
        tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
            dbinstance_id=iid, preferred_backup_time=window, preferred_backup_period=day,
            backup_retention_period=retention))
    server.stop()
    assert "enabled = false" in server.config_path.read_text()
    server.config_path.write_text(server.config_path.read_text().replace("enabled = false", "enabled = true"))
    server.start()
    return now


def skip_or_fail(reason: str) -> None:
    """A test that cannot run: under CI=true it fails with the reason (CI may not pass by skipping); elsewhere it is
    skipped with the reason."""
    if stack.in_ci():
        pytest.fail(f"{reason}; CI=true: a test may not pass by skipping", pytrace=False)
    pytest.skip(reason)


def require_mongo_tools() -> None:
    """mongodump + mongorestore (both releases, see stack.py) or skip_or_fail()."""
    reason = stack.mongo_tools_unavailable_reason()
    if reason is not None:
        skip_or_fail(reason)


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session", autouse=True)
def _check_binary():
    if not Path(DDSVAULT_BIN).is_file():
        pytest.exit(f"{DDSVAULT_BIN} not built: run ./scripts/test.sh (or cargo build -p ddsvault)", 2)


@pytest.fixture(scope="session")
def session_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("session")


def seed_data(client, dbs=("shop", "crm")):
    """A small, varied dataset in two databases; returns {ns: sorted docs}. (FerretDB 1.24 cannot store
    Decimal128: its connection panics on it, so the dataset leaves it out.)"""
    import datetime

    from bson import Binary, Int64, ObjectId, Regex, Timestamp

    shop = client[dbs[0]]
    shop.orders.insert_many([
        {"_id": i, "sku": f"SKU-{i % 17}", "qty": i % 5, "price": i + 0.25,
         "when": datetime.datetime(2026, 1, 1, tzinfo=datetime.timezone.utc) + datetime.timedelta(minutes=i),
         "tags": ["a", "b", str(i)], "nested": {"x": {"y": {"z": i}}}, "big": Int64(2**40 + i)}
        for i in range(1500)])
    shop.orders.create_index([("sku", 1)], name="sku_1")
    shop.customers.insert_many([{"_id": ObjectId(), "name": f"c{i}", "bin": Binary(bytes([i % 256]) * 8, 0),
                                 "re": Regex("^a.*", "i"), "ts": Timestamp(1700000000 + i, 1), "ok": i % 2 == 0,
                                 "none": None, "f": i / 7}
                                for i in range(300)])
    shop.customers.create_index([("name", 1)], name="name_1", unique=True)
    shop.create_collection("empty")
    crm = client[dbs[1]]
    crm.contacts.insert_many([{"_id": f"k{i}", "email": f"user{i}@example.com", "ünïcode": "日本語"} for i in range(200)])
    return snapshot(client, dbs)


def snapshot(client, dbs):
    from bson import BSON  # noqa: F401  (pymongo ships bson)
    out = {}
    for db in dbs:
        for coll in sorted(client[db].list_collection_names()):
            docs = list(client[db][coll].find({}, sort=[("_id", 1)]))
            out[f"{db}.{coll}"] = docs
    return out


def wait_backup(tea, instance_id: str, job_id: str, timeout: float = 180.0):
    """Polls DescribeBackups until the backup of `job_id` is listed; returns the SDK model of it."""
    from alibabacloud_dds20151201 import models as dds

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = tea.describe_backups(dds.DescribeBackupsRequest(dbinstance_id=instance_id, backup_job_id=job_id)).body
        if body.backups and body.backups.backup:
            return body.backups.backup[0]
        time.sleep(0.3)
    raise AssertionError(f"backup of job {job_id} not finished within {timeout}s")
