//! `ddsvault ram …`: RAM users, groups, policies and AccessKeys in the catalog. Works beside running servers.

use std::path::PathBuf;

use anyhow::Context;
use chrono::{DateTime, SecondsFormat, Utc};
use clap::{Args, Subcommand};
use ddsvault_catalog::PrincipalKind;
use ddsvault_server::identity::admin::{IdentityAdmin, Principal};

#[derive(Args)]
pub struct RamArgs {
    #[arg(long, short, env = "DDSVAULT_CONFIG", global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: RamCommand,
}

#[derive(Subcommand)]
enum RamCommand {
    /// RAM users.
    User {
        #[command(subcommand)]
        command: UserCommand,
    },
    /// RAM groups: their members inherit the policies attached to them.
    Group {
        #[command(subcommand)]
        command: GroupCommand,
    },
    /// Custom policies.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
    /// Attaches a policy to a user or a group.
    AttachPolicy {
        #[arg(long)]
        policy: String,
        #[command(flatten)]
        to: Target,
    },
    /// Detaches a policy from a user or a group.
    DetachPolicy {
        #[arg(long)]
        policy: String,
        #[command(flatten)]
        from: Target,
    },
    /// AccessKeys (at most 2 per user).
    Key {
        #[command(subcommand)]
        command: KeyCommand,
    },
}

#[derive(Args)]
#[group(required = true, multiple = false)]
struct Target {
    #[arg(long)]
    user: Option<String>,
    #[arg(long)]
    group: Option<String>,
}

impl Target {
    fn principal(self) -> anyhow::Result<Principal> {
        match (self.user, self.group) {
            (Some(u), None) => Ok(Principal::User(u)),
            (None, Some(g)) => Ok(Principal::Group(g)),
            _ => anyhow::bail!("give exactly one of --user and --group"),
        }
    }
}

#[derive(Subcommand)]
enum UserCommand {
    Create {
        name: String,
        #[arg(long, default_value = "")]
        display_name: String,
    },
    /// Refused while the user has AccessKeys, policies or groups.
    Delete {
        name: String,
    },
    List,
}

#[derive(Subcommand)]
enum GroupCommand {
    Create {
        name: String,
    },
    /// Refused while the group has members or policies.
    Delete {
        name: String,
    },
    List,
    AddUser {
        group: String,
        #[arg(long)]
        user: String,
    },
    RemoveUser {
        group: String,
        #[arg(long)]
        user: String,
    },
}

#[derive(Subcommand)]
enum PolicyCommand {
    /// Stores a policy document (JSON, RAM policy language) read from FILE (`-` for stdin).
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        document: PathBuf,
    },
    /// Refused while the policy is attached.
    Delete {
        name: String,
    },
    List,
    /// Prints a policy document.
    Show {
        name: String,
    },
}

#[derive(Subcommand)]
enum KeyCommand {
    /// Creates a key for a RAM user (or `root`) and prints its secret: this is the only time it is shown.
    Create {
        #[arg(long)]
        user: String,
    },
    /// Disables a key: every server sharing the catalog refuses it from its next request on.
    Disable {
        id: String,
    },
    Enable {
        id: String,
    },
    Delete {
        id: String,
    },
    /// Lists keys (never secrets), optionally of one user.
    List {
        #[arg(long)]
        user: Option<String>,
    },
}

fn time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

fn join(v: Vec<&str>) -> String {
    if v.is_empty() {
        "-".into()
    } else {
        v.join(",")
    }
}

/// Opens the identity catalog and runs one subcommand: one function per family (users, groups, policies, keys).
pub async fn run(args: RamArgs) -> anyhow::Result<()> {
    let cfg = crate::load_config(args.config.as_ref())?;
    let admin = IdentityAdmin::open(&cfg)
        .await
        .context("open the identity catalog")?;
    match args.command {
        RamCommand::User { command } => user(&admin, command).await,
        RamCommand::Group { command } => group(&admin, command).await,
        RamCommand::Policy { command } => policy(&admin, command).await,
        RamCommand::AttachPolicy { policy, to } => {
            let to = to.principal()?;
            admin.attach(&policy, &to).await?;
            println!("attached policy {policy} to {}", describe(&to));
            Ok(())
        }
        RamCommand::DetachPolicy { policy, from } => {
            let from = from.principal()?;
            admin.detach(&policy, &from).await?;
            println!("detached policy {policy} from {}", describe(&from));
            Ok(())
        }
        RamCommand::Key { command } => key(&admin, command).await,
    }
}

/// `ddsvault ram user …`
async fn user(admin: &IdentityAdmin, command: UserCommand) -> anyhow::Result<()> {
    match command {
        UserCommand::Create { name, display_name } => {
            admin.create_user(&name, &display_name).await?;
            println!("created user {name}");
        }
        UserCommand::Delete { name } => {
            admin.delete_user(&name).await?;
            println!("deleted user {name}");
        }
        UserCommand::List => list_users(admin).await?,
    }
    Ok(())
}

/// One line per user, with its groups and directly attached policies.
async fn list_users(admin: &IdentityAdmin) -> anyhow::Result<()> {
    let s = admin.snapshot().await?;
    println!("NAME\tSOURCE\tGROUPS\tPOLICIES\tCREATED");
    for u in &s.users {
        let groups = s
            .members
            .iter()
            .filter(|m| m.user == u.name)
            .map(|m| m.group.as_str())
            .collect();
        let policies = s
            .attachments
            .iter()
            .filter(|a| a.kind == PrincipalKind::User && a.principal == u.name)
            .map(|a| a.policy.as_str())
            .collect();
        println!(
            "{}\t{}\t{}\t{}\t{}",
            u.name,
            u.source,
            join(groups),
            join(policies),
            time(u.created_at)
        );
    }
    Ok(())
}

/// `ddsvault ram group …`
async fn group(admin: &IdentityAdmin, command: GroupCommand) -> anyhow::Result<()> {
    match command {
        GroupCommand::Create { name } => {
            admin.create_group(&name).await?;
            println!("created group {name}");
        }
        GroupCommand::Delete { name } => {
            admin.delete_group(&name).await?;
            println!("deleted group {name}");
        }
        GroupCommand::AddUser { group, user } => {
            admin.add_member(&group, &user).await?;
            println!("added user {user} to group {group}");
        }
        GroupCommand::RemoveUser { group, user } => {
            admin.remove_member(&group, &user).await?;
            println!("removed user {user} from group {group}");
        }
        GroupCommand::List => list_groups(admin).await?,
    }
    Ok(())
}

/// One line per group, with its members and policies.
async fn list_groups(admin: &IdentityAdmin) -> anyhow::Result<()> {
    let s = admin.snapshot().await?;
    println!("NAME\tSOURCE\tMEMBERS\tPOLICIES\tCREATED");
    for g in &s.groups {
        let members = s
            .members
            .iter()
            .filter(|m| m.group == g.name)
            .map(|m| m.user.as_str())
            .collect();
        let policies = s
            .attachments
            .iter()
            .filter(|a| a.kind == PrincipalKind::Group && a.principal == g.name)
            .map(|a| a.policy.as_str())
            .collect();
        println!(
            "{}\t{}\t{}\t{}\t{}",
            g.name,
            g.source,
            join(members),
            join(policies),
            time(g.created_at)
        );
    }
    Ok(())
}

/// `ddsvault ram policy …`
async fn policy(admin: &IdentityAdmin, command: PolicyCommand) -> anyhow::Result<()> {
    match command {
        PolicyCommand::Create { name, document } => {
            let text = read_policy_document(&document)?;
            admin.create_policy(&name, &text).await?;
            println!("created policy {name}");
        }
        PolicyCommand::Delete { name } => {
            admin.delete_policy(&name).await?;
            println!("deleted policy {name}");
        }
        PolicyCommand::Show { name } => {
            let s = admin.snapshot().await?;
            let p = s
                .policies
                .iter()
                .find(|p| p.name == name)
                .with_context(|| format!("RAM policy {name:?} does not exist"))?;
            println!("{}", p.document);
        }
        PolicyCommand::List => list_policies(admin).await?,
    }
    Ok(())
}

/// The policy document in `document`, or on stdin for `-`.
fn read_policy_document(document: &std::path::Path) -> anyhow::Result<String> {
    Ok(if document.as_os_str() == "-" {
        std::io::read_to_string(std::io::stdin()).context("read the policy from stdin")?
    } else {
        std::fs::read_to_string(document).with_context(|| format!("read {}", document.display()))?
    })
}

/// One line per policy, with the users and groups it is attached to.
async fn list_policies(admin: &IdentityAdmin) -> anyhow::Result<()> {
    let s = admin.snapshot().await?;
    println!("NAME\tSOURCE\tATTACHED TO\tCREATED");
    for p in &s.policies {
        let to: Vec<String> = s
            .attachments
            .iter()
            .filter(|a| a.policy == p.name)
            .map(|a| format!("{}:{}", a.kind.as_str(), a.principal))
            .collect();
        println!(
            "{}\t{}\t{}\t{}",
            p.name,
            p.source,
            join(to.iter().map(String::as_str).collect()),
            time(p.created_at)
        );
    }
    Ok(())
}

/// `ddsvault ram key …`
async fn key(admin: &IdentityAdmin, command: KeyCommand) -> anyhow::Result<()> {
    match command {
        KeyCommand::Create { user } => {
            let k = admin.create_key(&user).await?;
            println!("Created an AccessKey for {} (the secret is shown only now; it is stored encrypted):", k.user);
            println!("  AccessKeyId:     {}", k.id);
            println!("  AccessKeySecret: {}", k.secret);
        }
        KeyCommand::Disable { id } => {
            admin.set_key_active(&id, false).await?;
            println!("disabled AccessKey {id}");
        }
        KeyCommand::Enable { id } => {
            admin.set_key_active(&id, true).await?;
            println!("enabled AccessKey {id}");
        }
        KeyCommand::Delete { id } => {
            admin.delete_key(&id).await?;
            println!("deleted AccessKey {id}");
        }
        KeyCommand::List { user } => {
            println!("ACCESSKEYID\tUSER\tSTATUS\tSOURCE\tCREATED\tLASTUSED");
            for k in admin.list_keys(user.as_deref()).await? {
                println!(
                    "{}\t{}\t{}\t{}\t{}\t{}",
                    k.id,
                    k.user,
                    if k.active { "Active" } else { "Inactive" },
                    k.source,
                    time(k.created_at),
                    k.last_used_at.map_or_else(|| "-".into(), time)
                );
            }
        }
    }
    Ok(())
}

fn describe(p: &Principal) -> String {
    match p {
        Principal::User(u) => format!("user {u}"),
        Principal::Group(g) => format!("group {g}"),
    }
}
