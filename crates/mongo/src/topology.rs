//! Connecting to an instance and finding out what it is.
//!
//! [`connect`] fails fast (≈5 s server selection and connect timeouts unless the URI sets
//! its own) and checks reachability with a `ping`, so an unreachable instance gives
//! [`MongoError::Unreachable`] instead of a hang. [`discover`] classifies the deployment
//! from `hello` (or legacy `isMaster`) and `buildInfo`.

use std::time::Duration;

use bson::{doc, Document};
use mongodb::options::ClientOptions;
use mongodb::Client;

use crate::error::{MongoError, Result};

/// Server selection timeout used unless the URI sets `serverSelectionTimeoutMS`.
pub const DEFAULT_SERVER_SELECTION_TIMEOUT: Duration = Duration::from_secs(5);
/// TCP connect timeout used unless the URI sets `connectTimeoutMS`.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Databases that are never user data.
pub const SYSTEM_DATABASES: [&str; 3] = ["admin", "local", "config"];

/// Kind of deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopologyKind {
    /// A single server without replication.
    Standalone,
    /// A replica set member (`hello.setName` present).
    ReplicaSet,
    /// A `mongos` router (`hello.msg == "isdbgrid"`).
    Sharded,
}

/// What [`discover`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    /// Kind of deployment.
    pub kind: TopologyKind,
    /// Replica set name, for [`TopologyKind::ReplicaSet`].
    pub set_name: Option<String>,
    /// Members as the server lists them (`hello.hosts`), for replica sets.
    pub hosts: Vec<String>,
    /// `buildInfo.version` (for FerretDB: the MongoDB version it emulates).
    pub server_version: String,
    /// `major.minor` of `server_version`, e.g. `"7.0"`.
    pub engine_version: String,
    /// The server is FerretDB.
    pub is_ferretdb: bool,
    /// FerretDB's own version (`buildInfo.ferretdbVersion`), if FerretDB.
    pub ferretdb_version: Option<String>,
}

/// Whether any host of `uri` accepts a TCP connection within `timeout`: the "is the node stopped?" test of
/// file restores. A bare TCP connect, not `ping`: a server that refuses our credentials, or is still starting,
/// still holds its data files, so anything listening counts as running.
///
/// # Errors
/// [`MongoError::InvalidUri`] for a bad URI (or an SRV name that does not resolve), and for a host that is not
/// a TCP address (a Unix socket cannot be probed here).
pub async fn accepts_connections(uri: &str, timeout: Duration) -> Result<bool> {
    let opts = ClientOptions::parse(uri)
        .await
        .map_err(|e| MongoError::InvalidUri(format!("{}: {e}", redact_uri(uri))))?;
    for host in &opts.hosts {
        let mongodb::options::ServerAddress::Tcp { host, port } = host else {
            return Err(MongoError::InvalidUri(format!(
                "{}: only TCP hosts can be probed",
                redact_uri(uri)
            )));
        };
        let addr = (host.as_str(), port.unwrap_or(27017));
        if let Ok(Ok(_)) = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await
        {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Builds a client for `uri` and checks the server answers `ping`.
///
/// If a `mongodb://` URI names exactly one host and neither `replicaSet` nor
/// `directConnection`, the connection is direct (the server is used as is, whatever its
/// `hello` says; a secondary can then be backed up too).
///
/// # Errors
/// [`MongoError::InvalidUri`] for a bad URI, [`MongoError::Unreachable`] when no server
/// answers within the timeouts, [`MongoError::Authentication`] for refused credentials.
pub async fn connect(uri: &str) -> Result<Client> {
    let mut opts = ClientOptions::parse(uri)
        .await
        .map_err(|e| MongoError::InvalidUri(format!("{}: {e}", redact_uri(uri))))?;
    if opts.hosts.is_empty() {
        return Err(MongoError::InvalidUri(format!(
            "{}: no host given",
            redact_uri(uri)
        )));
    }
    // SRV URIs name a cluster, never a single server (and reject directConnection).
    let is_srv = uri.trim_start().starts_with("mongodb+srv://");
    if !is_srv
        && opts.hosts.len() == 1
        && opts.repl_set_name.is_none()
        && opts.direct_connection.is_none()
    {
        opts.direct_connection = Some(true);
    }
    if opts.server_selection_timeout.is_none() {
        opts.server_selection_timeout = Some(DEFAULT_SERVER_SELECTION_TIMEOUT);
    }
    if opts.connect_timeout.is_none() {
        opts.connect_timeout = Some(DEFAULT_CONNECT_TIMEOUT);
    }
    if opts.app_name.is_none() {
        opts.app_name = Some("ddsvault".to_string());
    }
    let hosts: Vec<String> = opts.hosts.iter().map(|h| h.to_string()).collect();
    let client = Client::with_options(opts)
        .map_err(|e| MongoError::InvalidUri(format!("{}: {e}", redact_uri(uri))))?;
    client
        .database("admin")
        .run_command(doc! { "ping": 1 })
        .await
        .map_err(
            |e| match MongoError::from_driver(format!("ping {}", hosts.join(",")), e) {
                // A ping that fails at the transport level means unreachable too.
                MongoError::Command { context, source }
                    if matches!(source.kind.as_ref(), mongodb::error::ErrorKind::Io(_)) =>
                {
                    MongoError::Unreachable(format!("{context}: {source}"))
                }
                other => other,
            },
        )?;
    Ok(client)
}

/// Runs `hello` (falling back to `isMaster`) and `buildInfo` and classifies the server.
///
/// # Errors
/// Driver errors wrapped with context; [`MongoError::Protocol`] if `buildInfo` has no version.
pub async fn discover(client: &Client) -> Result<Topology> {
    let admin = client.database("admin");
    let hello = match admin.run_command(doc! { "hello": 1 }).await {
        Ok(h) => h,
        Err(e) if is_command_not_found(&e) => admin
            .run_command(doc! { "isMaster": 1 })
            .await
            .map_err(|e| MongoError::from_driver("run isMaster", e))?,
        Err(e) => return Err(MongoError::from_driver("run hello", e)),
    };
    let build_info = admin
        .run_command(doc! { "buildInfo": 1 })
        .await
        .map_err(|e| MongoError::from_driver("run buildInfo", e))?;
    topology_from_replies(&hello, &build_info)
}

/// Pure part of [`discover`], separated for unit tests.
pub(crate) fn topology_from_replies(hello: &Document, build_info: &Document) -> Result<Topology> {
    let set_name = hello.get_str("setName").ok().map(str::to_string);
    let is_mongos = hello.get_str("msg").ok() == Some("isdbgrid");
    let kind = if is_mongos {
        TopologyKind::Sharded
    } else if set_name.is_some() {
        TopologyKind::ReplicaSet
    } else {
        TopologyKind::Standalone
    };
    let hosts = hello
        .get_array("hosts")
        .map(|a| {
            a.iter()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let server_version = build_info
        .get_str("version")
        .map_err(|_| MongoError::Protocol {
            context: "run buildInfo".into(),
            detail: "reply has no string field \"version\"".into(),
        })?
        .to_string();
    let engine_version = major_minor(&server_version);
    let ferretdb_version = build_info
        .get_str("ferretdbVersion")
        .ok()
        .map(str::to_string)
        .or_else(|| {
            build_info
                .get_document("ferretdb")
                .ok()
                .and_then(|d| d.get_str("version").ok())
                .map(str::to_string)
        });
    let is_ferretdb = ferretdb_version.is_some()
        || build_info
            .keys()
            .any(|k| k.to_ascii_lowercase().starts_with("ferretdb"));
    Ok(Topology {
        kind,
        set_name: if is_mongos { None } else { set_name },
        hosts,
        server_version,
        engine_version,
        is_ferretdb,
        ferretdb_version,
    })
}

/// `"7.0.12"` → `"7.0"`; anything without a dot is returned as is.
fn major_minor(version: &str) -> String {
    let mut parts = version.split('.');
    match (parts.next(), parts.next()) {
        (Some(major), Some(minor)) => {
            let minor: String = minor.chars().take_while(char::is_ascii_digit).collect();
            format!("{major}.{minor}")
        }
        _ => version.to_string(),
    }
}

/// Lists databases except `admin`, `local` and `config`, sorted by name.
///
/// # Errors
/// Driver errors wrapped with context.
pub async fn list_user_databases(client: &Client) -> Result<Vec<String>> {
    let mut names = client
        .list_database_names()
        .await
        .map_err(|e| MongoError::from_driver("run listDatabases", e))?;
    names.retain(|n| !SYSTEM_DATABASES.contains(&n.as_str()));
    names.sort();
    Ok(names)
}

fn is_command_not_found(e: &mongodb::error::Error) -> bool {
    matches!(e.kind.as_ref(), mongodb::error::ErrorKind::Command(c) if c.code == 59)
}

/// Removes the password from a URI for messages.
pub(crate) fn redact_uri(uri: &str) -> String {
    let Some(scheme_end) = uri.find("://") else {
        return uri.to_string();
    };
    let rest = &uri[scheme_end + 3..];
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let user = rest[..at].split(':').next().unwrap_or("");
            format!("{}{user}:***@{}", &uri[..scheme_end + 3], &rest[at + 1..])
        }
        None => uri.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_replies() {
        let bi = doc! { "version": "7.0.42", "ferretdbVersion": "v1.24.0" };
        let t = topology_from_replies(&doc! { "isWritablePrimary": true }, &bi).unwrap();
        assert_eq!(t.kind, TopologyKind::Standalone);
        assert!(t.is_ferretdb);
        assert_eq!(t.engine_version, "7.0");
        assert_eq!(t.ferretdb_version.as_deref(), Some("v1.24.0"));

        let hello = doc! { "setName": "rs0", "hosts": ["localhost:1"] };
        let t = topology_from_replies(&hello, &doc! { "version": "6.0.3" }).unwrap();
        assert_eq!(t.kind, TopologyKind::ReplicaSet);
        assert_eq!(t.set_name.as_deref(), Some("rs0"));
        assert_eq!(t.hosts, vec!["localhost:1".to_string()]);
        assert!(!t.is_ferretdb);

        let t = topology_from_replies(
            &doc! { "msg": "isdbgrid" },
            &doc! { "version": "5.0.1-rc0" },
        )
        .unwrap();
        assert_eq!(t.kind, TopologyKind::Sharded);
        assert_eq!(t.engine_version, "5.0");

        assert!(topology_from_replies(&doc! {}, &doc! {}).is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(
            redact_uri("mongodb://u:secret@h1:1,h2/db?x=1"),
            "mongodb://u:***@h1:1,h2/db?x=1"
        );
        assert_eq!(redact_uri("mongodb://h:1"), "mongodb://h:1");
    }

    #[tokio::test]
    async fn bad_uri_is_invalid() {
        let err = connect("notmongo://x").await.unwrap_err();
        assert!(matches!(err, MongoError::InvalidUri(_)), "{err}");
        assert!(err.is_permanent());
    }
}
