"""Point-in-time recovery (docs/pitr.md): continuous log backup of a real FerretDB oplog, recoverable ranges, and
restores to random seconds, both with RestoreDBInstance `RestoreTime` (V1 SDK) and with CreateDBInstance
`SrcDBInstanceId` + `RestoreType=1` + `RestoreTime` (tea V3 SDK, a newly provisioned instance), compared with the
state a writer recorded.

How the expected state at a second S is computed (the writer never pauses; the seconds are chosen afterwards):

* The writer is one synchronous client at ~100 ops/s (inserts, `$set` updates with a value unique to the update,
  deletes, a collection created explicitly after the base backup and filled, a collection that existed at the
  backup emptied with `delete_many` and then dropped). For every operation it records its client-side interval
  [before, after] (`time.time()`, the same clock FerretDB reads on this machine) and its effect on a model of the
  data. FerretDB chooses an entry's `ts` from its clock while it handles the operation, so `ts.time` lies in
  [floor(before), floor(after)].
* An operation whose interval lies inside one second belongs to that second. One that straddles a second boundary
  (at most one per boundary: the writer is sequential) is ambiguous from the client's side; for those, and only for
  those, the test reads the **source server's own oplog entry** for that operation (matched by namespace, op,
  `_id` and, for an update, its unique value) and takes its `ts` second: the source's truth, not ddsvault's output.
  An operation without an entry fails the test. The number resolved that way is printed.
* The state at S is the initial data plus every operation effect whose second is <= S, in order.
* FerretDB writes no oplog entry for DDL (create/drop collection; docs/pitr.md "Limits"), so a collection's
  existence without documents is not something PITR can reproduce from its oplog: states are compared per
  collection by their documents, a collection without documents counting as absent. The drop is therefore preceded
  by a `delete_many` (logged, one `d` entry per document), and the emptied collection is what is compared.
* The seconds are random: two among the writer's seconds before the drop, three from the drop's second on (so both
  sides of the drop are checked), seeded from the time; the seed is printed (`PITR_SEED=<n>` replays the choices
  and the writer's operation mix; the timing of a run cannot be replayed).
"""
from __future__ import annotations

import datetime
import json
import math
import os
import random
import threading
import time

import pytest
from aliyunsdkcore.acs_exception.exceptions import ServerException
from alibabacloud_dds20151201 import models as dds
from bson import Timestamp

import stack
from conftest import Ddsvault, config_text, tea_client, wait_backup
from test_restore import call, wait_restore


def fmt(secs: int) -> str:
    return datetime.datetime.fromtimestamp(secs, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse(t: str) -> int:
    return int(datetime.datetime.strptime(t, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc).timestamp())


def seed_from_env() -> int:
    seed = int(os.environ.get("PITR_SEED") or time.time_ns() % 2**31)
    print(f"\nPITR_SEED={seed}")
    return seed


class Op:
    """One operation of the writer: its client-side interval and its effects on the model, each
    (collection, _id, document or None for a delete, oplog match key or None when FerretDB logs nothing)."""

    __slots__ = ("before", "after", "effects", "what")

    def __init__(self, before: float, after: float, effects, what: str):
        self.before, self.after, self.effects, self.what = before, after, effects, what

    def straddles(self) -> bool:
        return math.floor(self.before) != math.floor(self.after)


class Writer(threading.Thread):
    """A synchronous writer at about `rate` ops/s on database `app` (see the module docs), paced by a schedule.

    It runs for at least `seconds` and until it has done at least `min_ops` operations (a loaded machine slows each
    operation down; the test waits for the work rather than assuming a speed), at most `max_seconds`.
    `create`: a collection created explicitly at the start and then filled; `drop`: a collection (in `initial`)
    emptied and dropped at half of `seconds`."""

    def __init__(self, client, initial: dict, seed: int, seconds: float = 12, min_ops: int = 600, rate: float = 100,
                 create: str | None = None, drop: str | None = None, max_seconds: float = 120):
        super().__init__(daemon=True)
        self.db = client.app
        self.initial = {c: {k: dict(d) for k, d in docs.items()} for c, docs in initial.items()}
        self.model = {c: {k: dict(d) for k, d in docs.items()} for c, docs in initial.items()}
        self.model.setdefault("items", {})
        self.seconds, self.min_ops, self.rate, self.max_seconds = seconds, min_ops, rate, max_seconds
        self.create, self.drop = create, drop
        self.next_id = max([k for k in self.model["items"] if isinstance(k, int)], default=-1) + 1_000_000
        self.seq = 0
        self.log: list[Op] = []
        self.drop_op: Op | None = None
        self.error = None
        self.rng = random.Random(seed)

    @property
    def ops(self) -> int:
        return len(self.log)

    def timed(self, fn, effects, what):
        before = time.time()
        fn()
        op = Op(before, time.time(), effects, what)
        self.log.append(op)
        for coll, k, doc, _ in effects:
            if doc is None:
                self.model.get(coll, {}).pop(k, None)
            else:
                self.model.setdefault(coll, {})[k] = dict(doc)
        return op

    def op(self):
        items = self.model["items"]
        r = self.rng.random()
        self.seq += 1
        if r < 0.4 or len(items) < 5:
            d = {"_id": self.next_id, "v": 0}
            self.next_id += 1
            self.timed(lambda: self.db["items"].insert_one(dict(d)),
                       [("items", d["_id"], d, ("i", "app.items", d["_id"], None))], "insert")
        elif r < 0.75:
            k = self.rng.choice(list(items))
            v = self.seq  # unique: identifies this update's oplog entry
            self.timed(lambda: self.db["items"].update_one({"_id": k}, {"$set": {"v": v}}),
                       [("items", k, {**items[k], "v": v}, ("u", "app.items", k, v))], "update")
        elif r < 0.9:
            k = self.rng.choice(list(items))
            self.timed(lambda: self.db["items"].delete_one({"_id": k}),
                       [("items", k, None, ("d", "app.items", k, None))], "delete")
        elif self.create is not None:
            c = self.create
            d = {"_id": self.seq, "w": self.rng.randrange(1000)}
            self.timed(lambda: self.db[c].insert_one(dict(d)), [(c, d["_id"], d, ("i", f"app.{c}", d["_id"], None))],
                       "insert")
        else:
            self.seq -= 1
            return self.op()

    def run(self):
        try:
            start = time.time()
            if self.create is not None:
                # Not in FerretDB's oplog (DDL): no effect on the compared documents.
                self.timed(lambda: self.db.create_collection(self.create), [], f"create {self.create}")
            dropped = self.drop is None
            k = 0
            while True:
                now = time.time()
                if now >= start + self.seconds and self.ops >= self.min_ops:
                    break
                if now >= start + self.max_seconds:
                    raise AssertionError(f"writer: only {self.ops} operations in {self.max_seconds} s")
                if not dropped and now >= start + self.seconds / 2:
                    dropped = True
                    c = self.drop
                    ids = sorted(self.model[c])
                    self.drop_op = self.timed(lambda: self.db[c].delete_many({}),
                                              [(c, i, None, ("d", f"app.{c}", i, None)) for i in ids],
                                              f"delete_many {c}")
                    self.timed(lambda: self.db.drop_collection(c), [], f"drop {c}")
                    self.model.pop(c, None)
                    continue
                self.op()
                k += 1
                pause = start + k / self.rate - time.time()
                if pause > 0:
                    time.sleep(pause)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e


def resolve(src_client, ops, seconds) -> dict:
    """For every operation that straddles the end of one of `seconds`, the `ts` second of each of its effects, read
    from the source's own oplog entry for it (see the module docs)."""
    out = {}
    oplog = src_client.local["oplog.rs"]
    for op in ops:
        lo, hi = math.floor(op.before), math.floor(op.after)
        if lo == hi or not any(lo <= s < hi for s in seconds):
            continue
        entries = list(oplog.find({"ts": {"$gte": Timestamp(lo, 0), "$lte": Timestamp(hi, 2**32 - 1)}}))
        for coll, k, doc, key in op.effects:
            if key is None:
                continue
            kind, ns, ident, v = key
            found = [e["ts"].time for e in entries if e.get("op") == kind and e.get("ns") == ns and (
                (kind == "u" and e.get("o2", {}).get("_id") == ident and e["o"].get("$set", {}).get("v") == v)
                or (kind != "u" and e["o"].get("_id") == ident))]
            assert found, f"the source's oplog has no entry for {op.what} {ns} {ident!r} in [{lo}, {hi}]"
            out[(id(op), coll, k)] = found[0]
    return out


def state_at(initial: dict, ops, second: int, resolved: dict) -> dict:
    model = {c: {k: dict(d) for k, d in docs.items()} for c, docs in initial.items()}
    for op in ops:
        for coll, k, doc, key in op.effects:
            if op.straddles() and key is not None and (id(op), coll, k) in resolved:
                sec = resolved[(id(op), coll, k)]
            else:
                sec = math.floor(op.before)
                # An unresolved straddling op is only ever compared at seconds it does not straddle.
                if op.straddles() and math.floor(op.before) <= second < math.floor(op.after):
                    raise AssertionError(f"{op.what} straddles {second + 1} and was not resolved")
            if sec > second:
                continue
            if doc is None:
                model.get(coll, {}).pop(k, None)
            else:
                model.setdefault(coll, {})[k] = dict(doc)
    return comparable(model)


def comparable(state: dict) -> dict:
    """Documents per collection; a collection without documents counts as absent (module docs)."""
    return {c: docs for c, docs in state.items() if docs}


def state_of(client) -> dict:
    db = client.app
    return comparable({c: {d["_id"]: d for d in db[c].find()} for c in db.list_collection_names()})


def random_seconds(rng, lo: int, hi: int, n: int) -> list[int]:
    """`n` distinct random seconds in [lo, hi], one in each of `n` equal strata (spread over the span)."""
    span = hi - lo + 1
    assert span >= n, (lo, hi, n)
    out = []
    for k in range(n):
        a, b = lo + span * k // n, lo + span * (k + 1) // n - 1
        out.append(rng.randint(a, max(a, b)))
    return sorted(set(out))


def provisioning_text(base) -> str:
    lo = stack.free_port()
    return (
        "[provisioning]\n"
        f"command = \"{stack.bin('ferretdb')} --handler=sqlite --sqlite-url=file:{{data_dir}}/ "
        "--listen-addr=127.0.0.1:{port} --state-dir={dir} --repl-set-name=rs0 --telemetry=disable "
        "--debug-addr=- --log-level=warn\"\n"
        f"port_min = {lo}\nport_max = {lo + 20}\n"
    )


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("pitr")
    src = stack.FerretDB(base / "src", repl_set_name="rs0", create_oplog=True)
    dst = stack.FerretDB(base / "dst", repl_set_name="rs0")
    initial = {"items": {i: {"_id": i, "v": 0} for i in range(50)},
               "old": {i: {"_id": i, "o": i * 7} for i in range(30)}}
    for c, docs in initial.items():
        src.client().app[c].insert_many([dict(d) for d in docs.values()])
    server = Ddsvault(base / "svc", config_text(base / "data", {
        "dds-src": (src.uri, "local_ssd"), "dds-dst": (dst.uri, "local_ssd")},
        extra="[log_backup]\nslice_secs = 1\npoll_ms = 200\n" + provisioning_text(base)))
    tea = tea_client(server)
    tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
        dbinstance_id="dds-src", enable_backup_log=1, log_backup_retention_period=7))
    wait_following(server)
    r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-src", backup_method="Logical")).body
    b = wait_backup(tea, "dds-src", r.backup_job_id, timeout=120)
    assert b.backup_status == "Success"
    yield {"server": server, "src": src, "dst": dst, "backup": b, "tea": tea, "base": base, "initial": initial}
    server.stop()
    for f in (src, dst):
        f.stop()


def ranges(server, iid="dds-src"):
    return call(server, "DescribeInstanceRecoverTime", DBInstanceId=iid)["RestoreRanges"]


def wait_following(server, iid="dds-src", timeout=60.0):
    """Until the follower has stored its first slice (the log backup runs), instead of a fixed pause."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if call(server, "DescribeBackupStorage", DBInstanceId=iid).get("LogStorageSize", 0) > 0:
            return
        time.sleep(0.2)
    raise AssertionError(f"log backup of {iid} stored nothing within {timeout}s")


def wait_covered(server, second: int, timeout=60.0, iid="dds-src"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rs = ranges(server, iid)
        if any(parse(r["RestoreBeginTime"]) <= second <= parse(r["RestoreEndTime"]) for r in rs):
            return rs
        time.sleep(0.2)
    raise AssertionError(f"second {fmt(second)} not recoverable within {timeout}s: {ranges(server, iid)}")


def restore_to(env, second: int):
    """RestoreDBInstance (V1 SDK) with RestoreTime into the configured instance dds-dst."""
    server, dst = env["server"], env["dst"]
    dst.client().drop_database("app")
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-src", RestoreTime=fmt(second),
               TargetDBInstanceId="dds-dst")
    job = wait_restore(server, "dds-dst", out["RestoreJobId"])
    assert job["Status"] == "Success", job["ErrorMessage"]
    return state_of(dst.client())


def create_at(env, second: int):
    """CreateDBInstance (tea V3 SDK) with SrcDBInstanceId + RestoreType=1 + RestoreTime: a new instance; its state,
    then it is deleted."""
    from test_provision import client_of, delete, wait_running

    out = env["tea"].create_dbinstance(dds.CreateDBInstanceRequest(
        region_id="cn-hangzhou", engine_version="4.0", dbinstance_class="dds.mongo.mid", dbinstance_storage=10,
        src_dbinstance_id="dds-src", restore_type="1", restore_time=fmt(second), database_names='["app"]')).body
    a, seen = wait_running(env, out.dbinstance_id)
    assert a.dbinstance_status == "Running", seen
    c = client_of(a)
    try:
        got = state_of(c)
    finally:
        c.close()
    delete(env, out.dbinstance_id)
    return got


def test_restores_to_random_seconds_equal_the_writers_state(env):
    server, src = env["server"], env["src"]
    seed = seed_from_env()
    rng = random.Random(seed)
    writer = Writer(src.client(), env["initial"], seed, seconds=12, min_ops=600, create="later", drop="old")
    writer.start()
    writer.join(180)
    assert not writer.is_alive() and writer.error is None, writer.error
    assert writer.ops >= 600 and writer.drop_op is not None, writer.ops
    first, last = math.floor(writer.log[0].before), math.floor(writer.log[-1].after)
    elapsed = writer.log[-1].after - writer.log[0].before
    drop_second = math.floor(writer.drop_op.before)
    seconds = random_seconds(rng, first, drop_second - 1, 2) + random_seconds(rng, drop_second, last, 3)
    assert len(seconds) == 5, seconds
    resolved = resolve(src.client(), writer.log, seconds)
    straddling = [op for op in writer.log if op.straddles()]
    done = time.time()
    rs = wait_covered(server, last)
    lag = time.time() - done
    print(f"writer: {writer.ops} ops in {elapsed:.1f} s ({writer.ops / elapsed:.0f}/s); {len(straddling)} straddled a "
          f"second boundary, {len({k[0] for k in resolved})} of them at a chosen second, resolved by the source's "
          f"oplog ts; drop of 'old' in second {drop_second}; chosen seconds {seconds}; the writer's last second was "
          f"recoverable {lag:.1f} s after it ended; ranges {rs}")
    assert len(rs) == 1 and rs[0]["RestoreType"] == "PointInTime"
    consistent = parse(call(server, "DescribeBackups", DBInstanceId="dds-src",
                            BackupId=env["backup"].backup_id)["Backups"]["Backup"][0]["BackupConsistentTime"])
    assert parse(rs[0]["RestoreBeginTime"]) == consistent <= first and last <= parse(rs[0]["RestoreEndTime"])
    # The SDK's own model parses the answer.
    body = env["tea"].describe_instance_recover_time(
        dds.DescribeInstanceRecoverTimeRequest(dbinstance_id="dds-src")).body
    assert body.restore_ranges[0].restore_end_time == rs[0]["RestoreEndTime"]
    assert call(server, "DescribeBackupStorage", DBInstanceId="dds-src")["LogStorageSize"] > 0

    wanted = {s: state_at(env["initial"], writer.log, s, resolved) for s in seconds}
    # The comparison can fail: the chosen seconds have different states (two adjacent seconds could be equal only
    # if the writer stalled for a whole second), and the dropped collection is there before the drop and gone
    # after it.
    states = [wanted[s] for s in seconds]
    assert len({json.dumps(st, sort_keys=True) for st in states}) >= 4, seconds
    assert "old" in states[0] and "old" not in states[-1] and "later" in states[-1]
    for second in seconds:
        ok = call(server, "CheckRecoveryCondition", SourceDBInstance="dds-src", RestoreTime=fmt(second),
                  RestoreType="1")
        assert ok["IsValid"] is True
        assert restore_to(env, second) == wanted[second], f"RestoreDBInstance to {fmt(second)} differs (seed {seed})"
        assert create_at(env, second) == wanted[second], f"CreateDBInstance to {fmt(second)} differs (seed {seed})"


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
    seed = seed_from_env()
    rng = random.Random(seed)
    # Continue from the data the source holds now.
    now = {c: {d["_id"]: d for d in src.client().app[c].find()} for c in src.client().app.list_collection_names()}
    first = Writer(src.client(), now, seed, seconds=3, min_ops=150)
    first.start()
    first.join(180)
    assert not first.is_alive() and first.error is None, first.error
    server.kill()  # SIGKILL: the open slice is lost from memory, its entries are still in the oplog
    down = Writer(src.client(), first.model, seed + 1, seconds=4, min_ops=200)
    down.next_id = first.next_id + 1_000_000
    down.start()
    down.join(180)
    assert not down.is_alive() and down.error is None, down.error
    server.start()
    ops = first.log + down.log
    last = math.floor(down.log[-1].after)
    rs = wait_covered(server, last + 1)
    assert len(rs) == 1, rs  # no gap: the follower resumed where the stored slices end
    # One second while ddsvault still ran, two while it was dead.
    seconds = random_seconds(rng, math.floor(first.log[0].before), math.floor(first.log[-1].after), 1) + \
        random_seconds(rng, math.floor(down.log[0].before), last, 2)
    resolved = resolve(src.client(), ops, seconds)
    print(f"chosen seconds {seconds}")
    for second in seconds:
        assert restore_to(env, second) == state_at(now, ops, second, resolved), \
            f"restore to {fmt(second)} differs (seed {seed})"


def test_an_oplog_that_rolls_past_a_stopped_log_backup_splits_the_ranges(tmp_path):
    """Log backup stopped, the source's small oplog rolls past where it stopped, log backup started again: the
    recoverable ranges break there (two ranges, not one that silently skips), and a second inside the gap is
    refused before anything is written."""
    # FerretDB trims a capped collection in the background (every minute by default): every second here, by half.
    src = stack.FerretDB(tmp_path / "src", repl_set_name="rs0",
                         extra_args=("--test-capped-cleanup-interval=1s", "--test-capped-cleanup-percentage=50"))
    src.client().local.create_collection("oplog.rs", capped=True, size=1 << 20, max=60)
    dst = stack.FerretDB(tmp_path / "dst", repl_set_name="rs0")
    server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {
        "dds-gap": (src.uri, "local_ssd"), "dds-gdst": (dst.uri, "local_ssd")},
        extra="[log_backup]\nslice_secs = 1\npoll_ms = 200\n"))
    tea = tea_client(server)
    items = src.client().app.items
    oplog = src.client().local["oplog.rs"]

    def policy(on: int):
        tea.modify_backup_policy(dds.ModifyBackupPolicyRequest(
            dbinstance_id="dds-gap", enable_backup_log=on, log_backup_retention_period=7))

    def base_backup():
        r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-gap", backup_method="Logical")).body
        assert wait_backup(tea, "dds-gap", r.backup_job_id, timeout=120).backup_status == "Success"

    def write(first: int, n: int, seconds: float):
        for i in range(n):
            items.insert_one({"_id": first + i})
            time.sleep(seconds / n)

    try:
        items.insert_many([{"_id": i} for i in range(20)])
        policy(1)
        wait_following(server, "dds-gap")
        base_backup()
        write(100, 10, 1.5)
        # The second of the last write, whole: turning log backup off then cannot leave any of these writes out.
        wait_covered(server, math.floor(time.time()), iid="dds-gap")
        policy(0)
        time.sleep(2)  # a few polls: the follower stores what it holds and stops reading
        stored_end = max(parse(r["RestoreEndTime"]) for r in ranges(server, "dds-gap"))
        # Overflow: 300 entries into an oplog trimmed to at most 60, over 3 s.
        gap_start = math.floor(time.time())
        write(1000, 300, 3.0)
        deadline = time.monotonic() + 60
        while True:
            oldest = next(oplog.find({}, {"ts": 1}).limit(1))["ts"].time
            if oldest > gap_start + 1:
                break
            assert time.monotonic() < deadline, f"FerretDB did not trim its oplog (oldest {oldest}, gap {gap_start})"
            time.sleep(0.5)
        policy(1)
        write(2000, 10, 1.0)
        base_backup()
        write(3000, 10, 1.5)
        rs = wait_covered(server, math.floor(time.time()) - 1, iid="dds-gap")
        rs = sorted(rs, key=lambda r: parse(r["RestoreBeginTime"]))
        assert len(rs) == 2, rs
        first_end, second_begin = parse(rs[0]["RestoreEndTime"]), parse(rs[1]["RestoreBeginTime"])
        # The first range ends where the follower stopped, before any entry the oplog lost; the second begins
        # after the oldest entry it still had.
        assert first_end <= gap_start and first_end >= stored_end, (rs, stored_end, gap_start)
        assert second_begin >= oldest, (rs, oldest)
        jobs_before = call(server, "DescribeRestoreTasks", DBInstanceId="dds-gdst")["RestoreJobs"]
        for t in (first_end + 1, gap_start + 1, second_begin - 1):
            ok = call(server, "CheckRecoveryCondition", SourceDBInstance="dds-gap", RestoreTime=fmt(t))
            assert ok["IsValid"] is False, (t, rs)
            with pytest.raises(ServerException) as ei:
                call(server, "RestoreDBInstance", DBInstanceId="dds-gap", RestoreTime=fmt(t),
                     TargetDBInstanceId="dds-gdst")
            assert ei.value.get_error_code() == "InvalidRestoreTime.OutOfRange"
            assert ei.value.get_http_status() == 400
        assert call(server, "DescribeRestoreTasks", DBInstanceId="dds-gdst")["RestoreJobs"] == jobs_before
        # Both sides of the gap still restore: the end of the first range has the first writes and none of the
        # ones made while log backup was off.
        out = call(server, "RestoreDBInstance", DBInstanceId="dds-gap", RestoreTime=fmt(first_end),
                   TargetDBInstanceId="dds-gdst")
        job = wait_restore(server, "dds-gdst", out["RestoreJobId"])
        assert job["Status"] == "Success", job["ErrorMessage"]
        ids = {d["_id"] for d in dst.client().app.items.find()}
        assert set(range(20)) | set(range(100, 110)) <= ids and not ids & set(range(1000, 1300)), sorted(ids)
    finally:
        server.stop()
        src.stop()
        dst.stop()
