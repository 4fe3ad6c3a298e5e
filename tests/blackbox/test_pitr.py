"""Point-in-time recovery (docs/pitr.md): continuous log backup of a real FerretDB oplog, recoverable ranges, and
RestoreDBInstance with RestoreTime (V1 SDK), compared with the state a writer recorded at chosen seconds."""
from __future__ import annotations

import copy
import datetime
import random
import threading
import time

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from alibabacloud_dds20151201 import models as dds

import stack
from conftest import Ddsvault, config_text, tea_client, wait_backup
from test_restore import call, wait_restore


def fmt(secs: int) -> str:
    return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(t: str) -> int:
    return int(datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp())


class Writer(threading.Thread):
    """Inserts, updates and deletes (and fills a collection created after the backup) at about 100 ops/s, keeping a
    model of the data. At each checkpoint it pauses across a whole-second boundary, so that the state at the end of
    the second before it is exactly the model at the pause."""

    def __init__(self, client, seconds: float, checkpoints: int, first_id: int):
        super().__init__(daemon=True)
        self.db = client.app
        self.seconds, self.checkpoints = seconds, checkpoints
        self.model = {"items": {i: {"_id": i, "v": 0} for i in range(first_id)}, "later": {}}
        self.next_id = first_id
        self.states = {}  # second -> model at the end of that second
        self.ops = 0
        self.error = None
        self.rng = random.Random(20)

    def op(self):
        items = self.model["items"]
        r = self.rng.random()
        if r < 0.4 or len(items) < 5:
            d = {"_id": self.next_id, "v": 0}
            self.next_id += 1
            self.db["items"].insert_one(dict(d))
            items[d["_id"]] = d
        elif r < 0.75:
            k = self.rng.choice(list(items))
            v = self.rng.randrange(1000)
            self.db["items"].update_one({"_id": k}, {"$set": {"v": v}})
            items[k]["v"] = v
        elif r < 0.9:
            k = self.rng.choice(list(items))
            self.db["items"].delete_one({"_id": k})
            del items[k]
        else:
            d = {"_id": len(self.model["later"]), "w": self.rng.randrange(1000)}
            self.db["later"].insert_one(dict(d))
            self.model["later"][d["_id"]] = d
        self.ops += 1

    def run(self):
        try:
            start = time.time()
            marks = [start + self.seconds * (k + 1) / (self.checkpoints + 1) for k in range(self.checkpoints)]
            while time.time() < start + self.seconds:
                if marks and time.time() >= marks[0]:
                    marks.pop(0)
                    # Nothing in flight: the last op ended before the boundary B; the next starts after it.
                    boundary = int(time.time()) + 1
                    self.states[boundary - 1] = copy.deepcopy(self.model)
                    time.sleep(boundary + 0.3 - time.time())
                self.op()
                time.sleep(0.008)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def state_of(client):
    db = client.app
    return {c: {d["_id"]: d for d in db[c].find()} for c in db.list_collection_names()}


def expected(model):
    # A collection exists once something was inserted into it.
    return {c: docs for c, docs in model.items() if docs or c == "items"}


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("pitr")
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    src.client().app["items"].insert_many([{"_id": i, "v": 0} for i in range(50)])
    server = Ddsvault(base / "svc", config_text(base / "data", {
        "dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd")},
        extra="[log_backup]\nslice_secs = 1\npoll_ms = 200"))
    tea = tea_client(server)
    tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
        dbinstance_id="dds-src", enable_backup_log=1, log_backup_retention_period=7))
    time.sleep(3)
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
    b = wait_backup(tea, "dds-src", r.backup_job_id, timeout=120)
    assert b.backup_status == "Success"
    yield {"server": server, "src": src, "dst": dst, "backup": b, "tea": tea}
    server.stop()
    for f in (src, dst):
        f.stop()


def ranges(server):
    return call(server, "DescribeInstanceRecoverTime", DBInstanceId="dds-src")["RestoreRanges"]


def wait_covered(server, second: int, timeout=60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rs = ranges(server)
        if any(parse(r["RestoreBeginTime"]) <= second <= parse(r["RestoreEndTime"]) for r in rs):
            return rs
        time.sleep(0.2)
    raise AssertionError(f"second {fmt(second)} not recoverable within {timeout}s: {ranges(server)}")


def restore_to(env, second: int):
    server, dst = env["server"], env["dst"]
    dst.client().drop_database("app")
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", RestoreTime=fmt(second),
               TargetDBInstanceId="dds-dst")
    job = wait_restore(server, "dds-dst", out["RestoreJobId"])
    assert job["Status"] == "Success", job["ErrorMessage"]
    return state_of(dst.client())


def test_restore_to_chosen_seconds_equals_the_writers_state(env):
    server, src = env["server"], env["src"]
    writer = Writer(src.client(), seconds=12, checkpoints=4, first_id=50)
    writer.start()
    writer.join(120)
    assert writer.error is None, writer.error
    assert len(writer.states) == 4 and writer.ops > 500, (len(writer.states), writer.ops)
    done = time.time()
    last = max(writer.states)
    rs = wait_covered(server, int(done))
    lag = time.time() - done
    print(f"\nwriter: {writer.ops} ops in 12 s; the second the writer ended was recoverable {lag:.1f} s later; "
          f"ranges {rs}")
    assert len(rs) == 1 and rs[0]["RestoreType"] == "PointInTime"
    consistent = parse(call(server, "DescribeBackups", DBInstanceId="dds-src",
                            BackupId=env["backup"].backup_id)["Backups"]["Backup"][0]["BackupConsistentTime"])
    assert parse(rs[0]["RestoreBeginTime"]) == consistent <= min(writer.states) and last <= parse(rs[0]["RestoreEndTime"])
    # The SDK's own model parses the answer.
    body = env["tea"].describe_instance_recover_time(
        dds.DescribeInstanceRecoverTimeRequest(dbinstance_id="dds-src")).body
    assert body.restore_ranges[0].restore_end_time == rs[0]["RestoreEndTime"]

    size = call(server, "DescribeBackupStorage", DBInstanceId="dds-src")["LogStorageSize"]
    assert size > 0

    for second, model in sorted(writer.states.items()):
        ok = call(server, "CheckRecoveryCondition", SourceDBInstance="dds-src", RestoreTime=fmt(second),
                  RestoreType="1")
        assert ok["IsValid"] is True
        got = restore_to(env, second)
        assert got == expected(model), f"restore to {fmt(second)} differs"
    # The states really differ from one checkpoint to the next (the comparison can fail).
    states = [expected(m) for _, m in sorted(writer.states.items())]
    assert all(a != b for a, b in zip(states, states[1:]))


def test_time_outside_every_range_is_refused_with_nothing_written(env):
    server, dst = env["server"], env["dst"]
    dst.client().app.marker.insert_one({"_id": "untouched"})
    before = state_of(dst.client())
    jobs_before = call(server, "DescribeRestoreTasks", DBInstanceId="dds-dst")["RestoreJobs"]
    begin = parse(ranges(server)[0]["RestoreBeginTime"])
    for t in (begin - 60, int(time.time()) + 3600):
        ok = call(server, "CheckRecoveryCondition", SourceDBInstance="dds-src", RestoreTime=fmt(t))
        assert ok["IsValid"] is False
        with pytest.raises(ServerException) as ei:
            call(server, "RestoreDBInstance", DBInstanceId="dds-src", RestoreTime=fmt(t),
                 TargetDBInstanceId="dds-dst")
        assert ei.value.get_error_code() == "InvalidRestoreTime.OutOfRange"
        assert ei.value.get_http_status() == 400
    with pytest.raises(ServerException) as ei:
        call(server, "RestoreDBInstance", DBInstanceId="dds-src", RestoreTime="yesterday",
             TargetDBInstanceId="dds-dst")
    assert ei.value.get_error_code() == "InvalidParameter"
    assert call(server, "DescribeRestoreTasks", DBInstanceId="dds-dst")["RestoreJobs"] == jobs_before
    assert state_of(dst.client()) == before


def test_follower_killed_and_restarted_resumes_without_loss(env):
    server, src = env["server"], env["src"]
    first = Writer(src.client(), seconds=3, checkpoints=1, first_id=0)
    # Continue from the data the source holds now.
    first.model = {"items": {d["_id"]: d for d in src.client().app["items"].find()},
                   "later": {d["_id"]: d for d in src.client().app["later"].find()}}
    first.next_id = max(first.model["items"]) + 1000
    first.start()
    first.join(60)
    assert first.error is None, first.error
    server.kill()  # SIGKILL: the open slice is lost from memory, its entries are still in the oplog
    down = Writer(src.client(), seconds=4, checkpoints=2, first_id=0)
    down.model, down.next_id = copy.deepcopy(first.model), first.next_id + 1000
    down.start()
    down.join(60)
    assert down.error is None, down.error
    server.start()
    rs = wait_covered(server, max(down.states) + 1)
    assert len(rs) == 1, rs  # no gap: the follower resumed where the stored slices end
    for second, model in sorted({**first.states, **down.states}.items()):
        assert restore_to(env, second) == expected(model), f"restore to {fmt(second)} differs"
