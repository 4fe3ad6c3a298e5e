"""RestoreDBInstance of Physical and Snapshot backups into a stopped FerretDB (SQLite backend): the backup's data
files replace the node's, through the V1 SDK, and a fresh FerretDB started on the directory serves exactly the
documents of backup time."""
from __future__ import annotations

import hashlib
import random

import pytest

import stack
from conftest import Ddsvault, config_text, seed_data, snapshot, tea_client, wait_backup
from test_physical import instance_lines
from test_restore import call, refused, wait_restore

DBS = ("shop", "crm")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    base = tmp_path_factory.mktemp("restorefiles")
    phys = stack.FerretDB(base / "phys", repl_set_name="rs0")
    snap = stack.FerretDB(base / "snap")
    for node in (phys, snap):
        seed_data(node.client(), DBS)
    # Nothing listens there: the instance only serves as a target without data_path.
    nopath_uri = f"mongodb://127.0.0.1:{stack.free_port()}/"
    text = config_text(base / "data", {}) + instance_lines("dds-fphys", phys.uri, data_path=phys.data_dir) \
        + instance_lines("dds-fsnap", snap.uri, data_path=snap.data_dir) \
        + instance_lines("dds-fnopath", nopath_uri)
    server = Ddsvault(base / "svc", text)
    yield {"server": server, "dds-fphys": phys, "dds-fsnap": snap, "base": base}
    server.stop()
    for node in (phys, snap):
        node.stop()


def backup(server, iid, method):
    tea = tea_client(server)
    r = call(server, "CreateBackup", DBInstanceId=iid, BackupMethod=method)
    b = wait_backup(tea, iid, r["BackupJobId"])
    assert (b.backup_status, b.backup_method) == ("Success", method), b
    return b.backup_id


def listing(d):
    return sorted(p.name for p in d.iterdir())


def contents(d):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir() if p.is_file()}


def leftovers(d):
    return [n for n in listing(d) if n.startswith(".ddsvault-")]


@pytest.mark.parametrize("iid,method", [("dds-fphys", "Physical"), ("dds-fsnap", "Snapshot")])
def test_file_backup_restores_into_the_stopped_node(env, iid, method):
    server, node = env["server"], env[iid]
    expected = snapshot(node.client(), DBS)
    backup_id = backup(server, iid, method)

    # Change the data after the backup: deletions, inserts, and a whole new database (a new file).
    c = node.client()
    c.shop.orders.delete_many({"_id": {"$lt": 100}})
    c.crm.contacts.insert_one({"_id": "after-backup"})
    c.later.things.insert_one({"_id": 1})
    assert snapshot(c, DBS) != expected

    # Refused while the node runs; nothing is written.
    before = listing(node.data_dir)
    e = refused(lambda: call(server, "RestoreDBInstance", DBInstanceId=iid, BackupId=backup_id))
    assert (e.get_http_status(), e.get_error_code()) == (403, "OperationDenied.DBInstanceStatus")
    assert "Stop the node first" in e.get_error_msg(), e.get_error_msg()
    assert listing(node.data_dir) == before and not leftovers(node.data_dir)

    node.stop()
    out = call(server, "RestoreDBInstance", DBInstanceId=iid, BackupId=backup_id)
    job = wait_restore(server, iid, out["RestoreJobId"])
    assert job["Status"] == "Success", job
    assert (job["BackupId"], job["SourceDBInstanceId"]) == (backup_id, iid)

    names = listing(node.data_dir)
    replaced = [n for n in names if n.startswith(".ddsvault-replaced-")]
    assert replaced == [f".ddsvault-replaced-{out['RestoreJobId']}"], names
    assert not [n for n in names if n.startswith(".ddsvault-restore-")], names
    # The restored databases are self-contained files: no WAL of the old ones may remain beside them.
    assert [n for n in names if not n.startswith(".")] == sorted(f"{db}.sqlite" for db in DBS)
    aside = listing(node.data_dir / replaced[0])
    assert {"shop.sqlite", "crm.sqlite", "later.sqlite"} <= set(aside), aside

    node.start()
    c = node.client()
    assert snapshot(c, DBS) == expected
    assert "later" not in c.list_database_names()


def test_file_restore_refusals(env):
    server, node = env["server"], env["dds-fphys"]
    backup_id = backup(server, "dds-fphys", "Physical")
    before = leftovers(node.data_dir)
    for param, value in (("DatabaseNames", "shop"), ("CollectionNames", "shop.orders"), ("DropExisting", "true")):
        e = refused(lambda: call(server, "RestoreDBInstance", DBInstanceId="dds-fphys", BackupId=backup_id,
                                 **{param: value}))
        assert (e.get_http_status(), e.get_error_code()) == (400, "InvalidParameter"), param
        assert param in e.get_error_msg() and "Logical" in e.get_error_msg()
    e = refused(lambda: call(server, "RestoreDBInstance", DBInstanceId="dds-fphys", BackupId=backup_id,
                             TargetDBInstanceId="dds-fnopath"))
    assert (e.get_http_status(), e.get_error_code()) == (400, "InvalidBackupMethod.DataPathRequired")
    assert "data_path" in e.get_error_msg()
    assert leftovers(node.data_dir) == before


def test_a_corrupt_backup_fails_the_job_and_leaves_the_node_alone(env):
    server, node = env["server"], env["dds-fphys"]
    expected = snapshot(node.client(), DBS)
    backup_id = backup(server, "dds-fphys", "Physical")
    node.client().crm.contacts.insert_one({"_id": "kept"})
    expected_now = snapshot(node.client(), DBS)
    assert expected_now != expected

    stored = env["base"] / "data" / "repository" / "backups" / "dds-fphys" / backup_id / "files" / "shop.sqlite"
    raw = bytearray(stored.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    stored.write_bytes(bytes(raw))

    node.stop()
    before = contents(node.data_dir)
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-fphys", BackupId=backup_id)
    job = wait_restore(server, "dds-fphys", out["RestoreJobId"])
    assert job["Status"] == "Failed", job
    assert "does not match the manifest" in job["ErrorMessage"], job
    assert contents(node.data_dir) == before
    assert not [n for n in leftovers(node.data_dir) if n.endswith(f"-{out['RestoreJobId']}")]

    node.start()
    assert snapshot(node.client(), DBS) == expected_now


def test_a_crash_during_a_file_restore_leaves_the_old_files_and_a_retry_succeeds(env):
    server, node = env["server"], env["dds-fsnap"]
    rnd = random.Random(7)
    # ~10 MB of barely compressible documents, so that the job is still writing files when ddsvault is killed.
    node.client().bulk.docs.insert_many([{"_id": i, "pad": rnd.randbytes(400).hex()} for i in range(12000)])
    dbs = DBS + ("bulk",)
    expected = snapshot(node.client(), dbs)
    backup_id = backup(server, "dds-fsnap", "Snapshot")
    node.client().bulk.docs.delete_many({"_id": {"$lt": 6000}})
    changed = snapshot(node.client(), dbs)

    node.stop()
    before = contents(node.data_dir)
    out = call(server, "RestoreDBInstance", DBInstanceId="dds-fsnap", BackupId=backup_id)
    status = "Scheduled"
    while status == "Scheduled":
        status = call(server, "DescribeRestoreTasks", DBInstanceId="dds-fsnap",
                      RestoreJobId=out["RestoreJobId"])["RestoreJobs"][0]["Status"]
    server.kill()
    server.start()
    job = wait_restore(server, "dds-fsnap", out["RestoreJobId"])
    mine = [n for n in leftovers(node.data_dir) if n.endswith(f"-{out['RestoreJobId']}")]
    if job["Status"] == "Failed":
        # Interrupted: the next start failed the job and removed its restore directory; the node is untouched.
        assert contents(node.data_dir) == before
        assert mine == [], mine
        node.start()
        assert snapshot(node.client(), dbs) == changed
        node.stop()
        out = call(server, "RestoreDBInstance", DBInstanceId="dds-fsnap", BackupId=backup_id)
        job = wait_restore(server, "dds-fsnap", out["RestoreJobId"])
    else:
        print(f"the restore was {status} when ddsvault was killed, and finished")
    assert job["Status"] == "Success", job
    node.start()
    assert snapshot(node.client(), dbs) == expected
