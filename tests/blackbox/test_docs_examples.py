"""The Python examples of the docs run as written (with this test's endpoint, keys and instance substituted), so
they stay working examples."""
from __future__ import annotations

import re
import time

from alibabacloud_dds20151201 import models as dds

import stack
from conftest import REPO, ROOT_AK, Ddsvault, config_text, seed_data, snapshot, tea_client, wait_backup
from test_restore import call


def example(doc: str, name: str) -> str:
    text = (REPO / "docs" / doc).read_text()
    start = text.index(f"<!-- example:{name} -->")
    block = re.search(r"```python\n(.*?)```", text[start:], re.S)
    assert block, name
    return block.group(1)


def run_example(code: str, server, instance: str, backup_id: str) -> dict:
    code = (code.replace('"LTAI..."', repr(ROOT_AK[0])).replace('"..."', repr(ROOT_AK[1]))
            .replace("port=8080", f"port={server.port}").replace('"127.0.0.1:8080"', repr(server.endpoint))
            .replace('"dds-bp1aaaa"', repr(instance)).replace('"12"', repr(backup_id)))
    scope: dict = {}
    exec(compile(code, "docs-example", "exec"), scope)  # noqa: S102 - the docs' own example, run on purpose
    return scope


def wait_restore(server, instance, job_id, timeout=120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = call(server, "DescribeRestoreTasks", DBInstanceId=instance, RestoreJobId=job_id)["RestoreJobs"]
        if jobs and jobs[0]["Status"] in ("Success", "Failed"):
            return jobs[0]
        time.sleep(0.3)
    raise AssertionError(f"restore job {job_id} not finished")


def test_the_restore_examples_of_docs_restore_md_work(tmp_path):
    f = stack.FerretDB(tmp_path / "f", repl_set_name="rs0", create_oplog=True)
    try:
        expected = seed_data(f.client())
        server = Ddsvault(tmp_path / "svc", config_text(tmp_path / "data", {"dds-ex": (f.uri, "local_ssd")}))
        try:
            tea = tea_client(server)
            r = tea.create_backup(dds.CreateBackupRequest(dbinstance_id="dds-ex", backup_method="Logical")).body
            assert wait_backup(tea, "dds-ex", r.backup_job_id).backup_status == "Success"
            for name in ("restore-v1", "restore-v3"):
                f.client().shop.orders.delete_many({"_id": {"$lt": 100}})
                scope = run_example(example("restore.md", name), server, "dds-ex", r.backup_id)
                job = wait_restore(server, "dds-ex", scope["restore_job_id"])
                assert job["Status"] == "Success", (name, job)
                assert snapshot(f.client(), ("shop", "crm")) == expected, name
        finally:
            server.stop()
    finally:
        f.stop()
