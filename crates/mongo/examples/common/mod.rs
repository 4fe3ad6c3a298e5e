//! Shared by the bench limits (`raw_read`, `raw_write`): what they read is what a logical backup would.

use mongodb::Client;

/// Every user collection as (database, collection), `system.*` collections left out as the dump leaves them.
pub async fn user_namespaces(
    client: &Client,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let mut namespaces = Vec::new();
    for db in ddsvault_mongo::topology::list_user_databases(client).await? {
        for c in client.database(&db).list_collection_names().await? {
            if !c.starts_with("system.") {
                namespaces.push((db.clone(), c));
            }
        }
    }
    Ok(namespaces)
}
