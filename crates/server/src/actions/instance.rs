//! Instance discovery: DescribeDBInstances, DescribeDBInstanceAttribute.
//!
//! Type, engine version and replica-set facts come from the server itself (`hello`, `buildInfo`), never from the
//! configuration; an instance that does not answer shows `DBInstanceStatus = Unavailable`.

use ddsvault_api::{ApiError, Params};
use ddsvault_mongo::topology::{Topology, TopologyKind};
use futures::future::join_all;
use serde_json::{json, Map, Value};

use super::{dds_time, page};
use crate::router::ActionResult;
use crate::state::{AppState, Instance};

fn dds_type(kind: TopologyKind) -> &'static str {
    match kind {
        TopologyKind::Sharded => "sharding",
        // Dds lists standalone instances (and anything else that is not a router) under "replicate".
        _ => "replicate",
    }
}

/// The status of a provisioned instance that is not `Running` in the catalog (`Creating`, `Failed`), or whose
/// server died and is being restarted (`Rebooting`): it is not probed (its server is not up yet, or gone).
async fn provisioned_status(st: &AppState, inst: &Instance) -> Option<&'static str> {
    if !inst.provisioned {
        return None;
    }
    match st.catalog.get_provisioned_instance(&inst.id).await {
        Ok(Some(p)) if p.status != ddsvault_catalog::ProvisionStatus::Running => {
            Some(p.status.as_str())
        }
        // Its server died and the supervisor restarts it (Dds' status of an instance restarting): not probed.
        _ if st
            .provisioner
            .as_ref()
            .is_some_and(|p| p.supervision(&inst.id).restarting) =>
        {
            Some("Rebooting")
        }
        _ => None,
    }
}

/// `Running`, `Restoring` while a restore job is pending or running, `Unavailable` when the server does not answer;
/// `Creating` / `Failed` for a provisioned instance whose creation runs or failed.
async fn status(st: &AppState, inst: &Instance, reachable: bool) -> &'static str {
    if let Some(s) = provisioned_status(st, inst).await {
        return s;
    }
    if !reachable {
        return "Unavailable";
    }
    // At most one job is active per instance (a unique index in the catalog).
    match st.catalog.active_job(&inst.id).await {
        Ok(Some((_, ddsvault_catalog::JobKind::Restore))) => "Restoring",
        _ => "Running",
    }
}

fn instance_json(
    st: &AppState,
    inst: &Instance,
    topo: Option<&Topology>,
    status: &str,
    detailed: bool,
) -> Value {
    let mut v = json!({
        "DBInstanceId": inst.id,
        "DBInstanceDescription": inst.description,
        "DBInstanceType": topo.map(|t| dds_type(t.kind)).unwrap_or("replicate"),
        "DBInstanceStatus": status,
        "Engine": "MongoDB",
        "EngineVersion": topo.map(|t| t.engine_version.clone()).unwrap_or_default(),
        "StorageType": inst.storage_type,
        "RegionId": st.region_id,
        "ZoneId": "",
        "CreationTime": dds_time(inst.created_at),
        "ChargeType": "PostPaid",
        "LockMode": "Unlock",
        "ReplicationFactor": topo.map(|t| t.hosts.len().max(1).to_string()).unwrap_or_default(),
        "DBInstanceClass": "",
        "DBInstanceStorage": 0,
        "NetworkType": "VPC",
        "Tags": {"Tag": []},
        // ddsvault extension: created by CreateDBInstance (DeleteDBInstance removes only these).
        "Provisioned": inst.provisioned,
        // ddsvault extension: `configured`, `provisioned` or `registered` (RegisterDBInstance, docs/instances.md).
        "Origin": inst.origin(),
    });
    if inst.registered {
        if let Value::Object(m) = &mut v {
            // ddsvault extension: the node meant to run its jobs ("" = any).
            m.insert("Node".into(), json!(inst.node.clone().unwrap_or_default()));
        }
    }
    if detailed {
        if let Value::Object(m) = &mut v {
            m.insert(
                "ReplicaSetName".into(),
                json!(topo.and_then(|t| t.set_name.clone()).unwrap_or_default()),
            );
            m.insert(
                "CurrentKernelVersion".into(),
                json!(topo.map(|t| t.server_version.clone()).unwrap_or_default()),
            );
            m.insert("UseClusterBackup".into(), json!(false));
            m.insert("Encrypted".into(), json!(false));
            let members: Vec<Value> = if topo.is_none() && inst.provisioned {
                // Not answering yet (Creating): where it will listen. Its URI holds no secret.
                let hostport = inst
                    .uri
                    .trim_start_matches("mongodb://")
                    .trim_end_matches('/');
                let (host, port) = hostport.rsplit_once(':').unwrap_or((hostport, ""));
                vec![json!({
                    "ReplicaSetRole": "Primary",
                    "ConnectionDomain": host,
                    "ConnectionPort": port,
                    "NetworkType": "VPC",
                })]
            } else {
                topo.map(|t| {
                    t.hosts
                        .iter()
                        .enumerate()
                        .map(|(i, h)| {
                            let (host, port) = h.rsplit_once(':').unwrap_or((h.as_str(), ""));
                            json!({
                                "ReplicaSetRole": if i == 0 { "Primary" } else { "Secondary" },
                                "ConnectionDomain": host,
                                "ConnectionPort": port,
                                "NetworkType": "VPC",
                            })
                        })
                        .collect()
                })
                .unwrap_or_default()
            };
            m.insert("ReplicaSets".into(), json!({ "ReplicaSet": members }));
            if inst.provisioned {
                // ddsvault extension: the connection string of an instance ddsvault runs (never of a configured
                // one, whose URI may hold credentials).
                m.insert("ConnectionString".into(), json!(inst.uri));
            }
        }
    }
    v
}

pub async fn describe_db_instances(st: &AppState, p: &Params) -> ActionResult {
    let pg = page(p)?;
    if let Some(r) = p.get("RegionId") {
        if !r.is_empty() && r != st.region_id {
            // Another region holds none of our instances.
            let mut out = Map::new();
            out.insert("DBInstances".into(), json!({"DBInstance": []}));
            out.insert("TotalCount".into(), json!(0));
            out.insert("PageNumber".into(), json!(pg.number));
            out.insert("PageSize".into(), json!(pg.size));
            return Ok(out);
        }
    }
    let want_type = p
        .get("DBInstanceType")
        .filter(|s| !s.is_empty())
        .unwrap_or("replicate");
    if !["replicate", "sharding", "serverless"].contains(&want_type) {
        return Err(ApiError::invalid_parameter(
            "DBInstanceType",
            "Valid values: replicate, sharding.",
        ));
    }
    let want_id = p.get("DBInstanceId").filter(|s| !s.is_empty());
    let mut candidates: Vec<std::sync::Arc<Instance>> = st
        .all_instances()
        .into_iter()
        .filter(|i| want_id.is_none_or(|w| w.split(',').any(|x| x.trim() == i.id)))
        .collect();
    candidates.sort_by(|a, b| a.id.cmp(&b.id));
    let probes = join_all(candidates.iter().map(|i| async move {
        // A provisioned instance being created (or failed) has no server to ask.
        if provisioned_status(st, i).await.is_some() {
            return Err(crate::error::ActionError::InstanceUnreachable(
                "not running".into(),
            ));
        }
        st.probe(i).await
    }))
    .await;
    let mut rows: Vec<Value> = Vec::new();
    for (inst, probe) in candidates.iter().zip(probes) {
        let topo = probe.ok().map(|(_, t)| t);
        let ty = topo
            .as_ref()
            .map(|t| dds_type(t.kind))
            .unwrap_or("replicate");
        if ty != want_type {
            continue;
        }
        let status = status(st, inst, topo.is_some()).await;
        if let Some(s) = p.get("DBInstanceStatus").filter(|s| !s.is_empty()) {
            if s != status {
                continue;
            }
        }
        rows.push(instance_json(st, inst, topo.as_ref(), status, false));
    }
    let total = rows.len();
    let start = (pg.number as usize - 1).saturating_mul(pg.size as usize);
    let page_rows: Vec<Value> = rows
        .into_iter()
        .skip(start)
        .take(pg.size as usize)
        .collect();
    let mut out = Map::new();
    out.insert("DBInstances".into(), json!({ "DBInstance": page_rows }));
    out.insert("TotalCount".into(), json!(total));
    out.insert("PageNumber".into(), json!(pg.number));
    out.insert("PageSize".into(), json!(pg.size));
    Ok(out)
}

/// ddsvault extension fields of a provisioned instance: how often the supervisor restarted its server, how it last
/// ended, and why the last restart failed.
fn add_supervision(st: &AppState, inst: &Instance, row: &mut Value) {
    if let (true, Some(p), Value::Object(m)) = (inst.provisioned, &st.provisioner, row) {
        let sup = p.supervision(&inst.id);
        m.insert("Restarts".into(), json!(sup.restarts));
        m.insert("LastExit".into(), json!(sup.last_exit.unwrap_or_default()));
        m.insert(
            "RestartError".into(),
            json!(sup.last_error.unwrap_or_default()),
        );
    }
}

pub async fn describe_db_instance_attribute(st: &AppState, p: &Params) -> ActionResult {
    let id = p.required("DBInstanceId")?;
    let inst = st.instance(id)?;
    let inst = &*inst;
    if provisioned_status(st, inst).await.is_some() {
        let status = status(st, inst, false).await;
        let mut row = instance_json(st, inst, None, status, true);
        add_supervision(st, inst, &mut row);
        let mut out = Map::new();
        out.insert("DBInstances".into(), json!({ "DBInstance": [row] }));
        return Ok(out);
    }
    // One probe serves both the answer and the checks.
    let probed = crate::checks::probe_outcome(st.probe(inst).await);
    let topo = probed.as_ref().ok().map(|(_, t)| t.clone());
    let findings =
        crate::checks::check_probed(probed, inst.data_path.as_deref(), &inst.storage_type).await;
    let status = status(st, inst, topo.is_some()).await;
    let mut row = instance_json(st, inst, topo.as_ref(), status, true);
    if let Value::Object(m) = &mut row {
        // ddsvault extension: the instance's checks, run now (see `ddsvault check`).
        m.insert("Checks".into(), crate::checks::findings_json(&findings));
    }
    add_supervision(st, inst, &mut row);
    let mut out = Map::new();
    out.insert("DBInstances".into(), json!({ "DBInstance": [row] }));
    Ok(out)
}
