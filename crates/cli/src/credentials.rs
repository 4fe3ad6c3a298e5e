//! Where the API verbs find their endpoint and AccessKey: flags, then the environment, then a profile file in
//! the shape of the aliyun CLI's `~/.aliyun/config.json` (plus an `endpoint` key).
//!
//! The AccessKeyId and its secret always come from one place together: a key id from a flag and a secret from
//! a profile would sign with a mismatched pair and fail with a signature error that hides the real mistake.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::client::CliError;

/// The endpoint used when no flag, variable or profile names one (`ddsvault serve`'s default listen address).
pub const DEFAULT_ENDPOINT: &str = "http://127.0.0.1:8080";

/// How the API verbs reach the server. Every flag falls back to the environment, then to the profile file.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ApiArgs {
    /// The ddsvault API address, e.g. http://127.0.0.1:8080 or https://backup.example.com (no scheme: http).
    /// Else $DDSVAULT_ENDPOINT, the profile's `endpoint`, or http://127.0.0.1:8080.
    #[arg(long, global = true, value_name = "URL")]
    pub endpoint: Option<String>,
    /// AccessKeyId. Else $DDSVAULT_ACCESS_KEY_ID, $ALIBABA_CLOUD_ACCESS_KEY_ID, or the profile.
    #[arg(long, global = true, value_name = "ID", requires = "access_key_secret")]
    pub access_key_id: Option<String>,
    /// AccessKey secret (visible to other local users in the process list: prefer the environment or a
    /// profile). Else $DDSVAULT_ACCESS_KEY_SECRET, $ALIBABA_CLOUD_ACCESS_KEY_SECRET, or the profile.
    #[arg(long, global = true, value_name = "SECRET", requires = "access_key_id")]
    pub access_key_secret: Option<String>,
    /// A profile of the profile file ($DDSVAULT_PROFILE_FILE or ~/.ddsvault/config.json); default: the file's
    /// `current` profile. Chosen by this flag, it takes precedence over the environment.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// A PEM file of CA certificates trusted for an https endpoint, beside the system's (or
    /// $DDSVAULT_CA_CERT).
    #[arg(long, global = true, value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
}

/// What a call needs: where to send it and the key to sign it with.
#[derive(Clone)]
pub struct Resolved {
    pub endpoint: String,
    pub access_key_id: String,
    /// Never printed: [`std::fmt::Debug`] below leaves it out.
    pub access_key_secret: String,
    /// Where the key came from, for error messages ("--access-key-id", "DDSVAULT_ACCESS_KEY_ID", "profile x").
    pub key_source: String,
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Resolved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Resolved")
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field("access_key_secret", &"<redacted>")
            .field("key_source", &self.key_source)
            .finish()
    }
}

/// The aliyun CLI's config.json: `{"current": "...", "profiles": [...]}`.
#[derive(Debug, Deserialize)]
pub struct ProfileFile {
    #[serde(default)]
    pub current: String,
    #[serde(default)]
    pub profiles: Vec<Profile>,
}

/// One profile. Fields the aliyun CLI writes that ddsvault does not use are ignored.
#[derive(Debug, Deserialize)]
pub struct Profile {
    pub name: String,
    /// `AK` (or absent) is the only mode ddsvault signs with.
    #[serde(default)]
    pub mode: String,
    #[serde(default)]
    pub access_key_id: String,
    #[serde(default)]
    pub access_key_secret: String,
    #[serde(default)]
    pub region_id: String,
    /// ddsvault's addition: the API address.
    #[serde(default)]
    pub endpoint: String,
}

impl ProfileFile {
    pub fn parse(text: &str, path: &Path) -> Result<Self, CliError> {
        serde_json::from_str(text).map_err(|e| {
            CliError::Usage(format!(
                "the profile file {} is not valid: {e}",
                path.display()
            ))
        })
    }

    /// The named profile, else `current`, else the only one. `None` when the file names none to use.
    fn pick(&self, name: Option<&str>, path: &Path) -> Result<Option<&Profile>, CliError> {
        let want = name.or((!self.current.is_empty()).then_some(self.current.as_str()));
        match want {
            Some(w) => self
                .profiles
                .iter()
                .find(|p| p.name == w)
                .map(Some)
                .ok_or_else(|| {
                    CliError::Usage(format!(
                        "the profile file {} has no profile {w:?} (it has: {})",
                        path.display(),
                        self.profiles
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ))
                }),
            None if self.profiles.len() == 1 => Ok(self.profiles.first()),
            None => Ok(None),
        }
    }
}

/// The profile file's path: `$DDSVAULT_PROFILE_FILE`, else `~/.ddsvault/config.json`.
fn profile_path(env: &dyn Fn(&str) -> Option<String>) -> Option<PathBuf> {
    if let Some(p) = env("DDSVAULT_PROFILE_FILE") {
        return Some(PathBuf::from(p));
    }
    env("HOME").map(|h| Path::new(&h).join(".ddsvault").join("config.json"))
}

/// Loads the profile to use, if any. A missing file is no error unless a profile was asked for by name or the
/// file was named by `$DDSVAULT_PROFILE_FILE`.
fn load_profile(
    args: &ApiArgs,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Option<(Profile, PathBuf)>, CliError> {
    let Some(path) = profile_path(env) else {
        return Ok(None);
    };
    let name = args.profile.clone().or_else(|| env("DDSVAULT_PROFILE"));
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(n) = name {
                return Err(CliError::Usage(format!(
                    "profile {n:?} asked for, but there is no profile file {}",
                    path.display()
                )));
            }
            if env("DDSVAULT_PROFILE_FILE").is_some() {
                return Err(CliError::Usage(format!(
                    "DDSVAULT_PROFILE_FILE names {}, which does not exist",
                    path.display()
                )));
            }
            return Ok(None);
        }
        Err(e) => {
            return Err(CliError::Usage(format!(
                "cannot read the profile file {}: {e}",
                path.display()
            )))
        }
    };
    let file = ProfileFile::parse(&text, &path)?;
    let Some(p) = file.pick(name.as_deref(), &path)? else {
        return Ok(None);
    };
    if !p.mode.is_empty() && p.mode != "AK" {
        return Err(CliError::Usage(format!(
            "profile {:?} in {} has mode {:?}; ddsvault signs with AccessKeys only (mode \"AK\")",
            p.name,
            path.display(),
            p.mode
        )));
    }
    let picked = Profile {
        name: p.name.clone(),
        mode: p.mode.clone(),
        access_key_id: p.access_key_id.clone(),
        access_key_secret: p.access_key_secret.clone(),
        region_id: p.region_id.clone(),
        endpoint: p.endpoint.clone(),
    };
    Ok(Some((picked, path)))
}

/// Normalises an endpoint: a missing scheme means http; no path, query or trailing slash.
pub fn normalize_endpoint(raw: &str) -> Result<String, CliError> {
    let raw = raw.trim();
    let with_scheme = if raw.contains("://") {
        raw.to_string()
    } else {
        format!("http://{raw}")
    };
    let url = reqwest::Url::parse(&with_scheme)
        .map_err(|e| CliError::Usage(format!("invalid endpoint {raw:?}: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(CliError::Usage(format!(
            "invalid endpoint {raw:?}: use http:// or https://"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(CliError::Usage(format!(
            "invalid endpoint {raw:?}: no host"
        )));
    }
    if url.path() != "/" || url.query().is_some() || !url.username().is_empty() {
        return Err(CliError::Usage(format!(
            "invalid endpoint {raw:?}: give scheme, host and port only"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

/// Resolves the endpoint and key, in order: flags, environment, profile file. `env` reads a variable (the
/// process environment in the binary, a map in tests).
pub fn resolve(args: &ApiArgs, env: &dyn Fn(&str) -> Option<String>) -> Result<Resolved, CliError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    // A profile chosen by flag outranks the environment; the default profile comes last.
    let profile = load_profile(args, &env)?;
    let explicit_profile = args.profile.is_some();
    let from_profile = |p: &(Profile, PathBuf)| -> Option<(String, String, String)> {
        let (p, path) = p;
        (!p.access_key_id.is_empty() || !p.access_key_secret.is_empty()).then(|| {
            (
                p.access_key_id.clone(),
                p.access_key_secret.clone(),
                format!("profile {:?} of {}", p.name, path.display()),
            )
        })
    };
    let from_env = |id: &str, secret: &str| -> Option<(String, String, String)> {
        let (i, s) = (env(id), env(secret));
        (i.is_some() || s.is_some()).then(|| {
            (
                i.unwrap_or_default(),
                s.unwrap_or_default(),
                format!("{id}/{secret}"),
            )
        })
    };
    let flags = match (&args.access_key_id, &args.access_key_secret) {
        (None, None) => None,
        (i, s) => Some((
            i.clone().unwrap_or_default(),
            s.clone().unwrap_or_default(),
            "--access-key-id/--access-key-secret".to_string(),
        )),
    };
    let key = flags
        .or_else(|| {
            explicit_profile
                .then(|| profile.as_ref().and_then(from_profile))
                .flatten()
        })
        .or_else(|| from_env("DDSVAULT_ACCESS_KEY_ID", "DDSVAULT_ACCESS_KEY_SECRET"))
        .or_else(|| {
            from_env(
                "ALIBABA_CLOUD_ACCESS_KEY_ID",
                "ALIBABA_CLOUD_ACCESS_KEY_SECRET",
            )
        })
        .or_else(|| profile.as_ref().and_then(from_profile));
    let Some((id, secret, source)) = key else {
        return Err(CliError::Credentials(
            "no AccessKey given. Give one in any of three ways: the flags --access-key-id and \
             --access-key-secret; the environment variables DDSVAULT_ACCESS_KEY_ID and DDSVAULT_ACCESS_KEY_SECRET \
             (or ALIBABA_CLOUD_ACCESS_KEY_ID and ALIBABA_CLOUD_ACCESS_KEY_SECRET); or a profile file \
             (~/.ddsvault/config.json or $DDSVAULT_PROFILE_FILE, in the aliyun CLI's config.json format)"
                .into(),
        ));
    };
    if id.trim().is_empty() || secret.trim().is_empty() {
        let missing = if id.trim().is_empty() {
            "AccessKeyId"
        } else {
            "AccessKey secret"
        };
        return Err(CliError::Credentials(format!(
            "{source} gives an AccessKey without its {missing}: give both from the same place"
        )));
    }
    let endpoint = match args
        .endpoint
        .clone()
        .or_else(|| env("DDSVAULT_ENDPOINT"))
        .or_else(|| {
            profile
                .as_ref()
                .map(|(p, _)| p.endpoint.clone())
                .filter(|e| !e.is_empty())
        }) {
        Some(e) => normalize_endpoint(&e)?,
        None => DEFAULT_ENDPOINT.to_string(),
    };
    Ok(Resolved {
        endpoint,
        access_key_id: id.trim().to_string(),
        access_key_secret: secret.trim().to_string(),
        key_source: source,
        ca_cert: args
            .ca_cert
            .clone()
            .or_else(|| env("DDSVAULT_CA_CERT").map(PathBuf::from)),
    })
}

/// [`resolve`] with the process environment.
pub fn resolve_from_process(args: &ApiArgs) -> Result<Resolved, CliError> {
    resolve(args, &|k| std::env::var(k).ok())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| m.get(k).cloned()
    }

    const FILE: &str = r#"{
        "current": "prod",
        "profiles": [
            {"name": "prod", "mode": "AK", "access_key_id": "LTAIprod", "access_key_secret": "s-prod",
             "region_id": "cn-hangzhou", "endpoint": "https://backup.example.com:8443", "output_format": "json"},
            {"name": "dev", "mode": "AK", "access_key_id": "LTAIdev", "access_key_secret": "s-dev",
             "region_id": "cn-shanghai"},
            {"name": "sts", "mode": "StsToken", "access_key_id": "x", "access_key_secret": "y", "sts_token": "t"}
        ],
        "meta_path": ""
    }"#;

    fn with_file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("config.json");
        std::fs::write(&p, text).unwrap();
        let s = p.to_str().unwrap().to_string();
        (dir, s)
    }

    #[test]
    fn flags_win_over_everything() {
        let (_d, f) = with_file(FILE);
        let args = ApiArgs {
            endpoint: Some("10.0.0.1:9000".into()),
            access_key_id: Some("LTAIflag".into()),
            access_key_secret: Some("s-flag".into()),
            ..Default::default()
        };
        let env = env_of(&[
            ("DDSVAULT_PROFILE_FILE", &f),
            ("DDSVAULT_ACCESS_KEY_ID", "LTAIenv"),
            ("DDSVAULT_ACCESS_KEY_SECRET", "s-env"),
            ("DDSVAULT_ENDPOINT", "http://env:1"),
        ]);
        let r = resolve(&args, &env).unwrap();
        assert_eq!(r.access_key_id, "LTAIflag");
        assert_eq!(r.access_key_secret, "s-flag");
        assert_eq!(r.endpoint, "http://10.0.0.1:9000");
    }

    #[test]
    fn environment_before_default_profile_and_ddsvault_before_alibaba() {
        let (_d, f) = with_file(FILE);
        let both = env_of(&[
            ("DDSVAULT_PROFILE_FILE", &f),
            ("DDSVAULT_ACCESS_KEY_ID", "LTAIenv"),
            ("DDSVAULT_ACCESS_KEY_SECRET", "s-env"),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIali"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s-ali"),
        ]);
        let r = resolve(&ApiArgs::default(), &both).unwrap();
        assert_eq!(
            (r.access_key_id.as_str(), r.access_key_secret.as_str()),
            ("LTAIenv", "s-env")
        );
        // The endpoint still comes from the profile: the environment did not name one.
        assert_eq!(r.endpoint, "https://backup.example.com:8443");

        let ali = env_of(&[
            ("DDSVAULT_PROFILE_FILE", &f),
            ("ALIBABA_CLOUD_ACCESS_KEY_ID", "LTAIali"),
            ("ALIBABA_CLOUD_ACCESS_KEY_SECRET", "s-ali"),
        ]);
        let r = resolve(&ApiArgs::default(), &ali).unwrap();
        assert_eq!(r.access_key_id, "LTAIali");

        let none = env_of(&[("DDSVAULT_PROFILE_FILE", &f)]);
        let r = resolve(&ApiArgs::default(), &none).unwrap();
        assert_eq!(
            (r.access_key_id.as_str(), r.access_key_secret.as_str()),
            ("LTAIprod", "s-prod")
        );
    }

    #[test]
    fn a_profile_named_by_flag_outranks_the_environment() {
        let (_d, f) = with_file(FILE);
        let env = env_of(&[
            ("DDSVAULT_PROFILE_FILE", &f),
            ("DDSVAULT_ACCESS_KEY_ID", "LTAIenv"),
            ("DDSVAULT_ACCESS_KEY_SECRET", "s-env"),
        ]);
        let args = ApiArgs {
            profile: Some("dev".into()),
            ..Default::default()
        };
        let r = resolve(&args, &env).unwrap();
        assert_eq!(r.access_key_id, "LTAIdev");
        // dev has no endpoint: the default.
        assert_eq!(r.endpoint, DEFAULT_ENDPOINT);
        assert!(r.key_source.contains("\"dev\""), "{}", r.key_source);
    }

    #[test]
    fn bad_profiles_are_usage_errors() {
        let (_d, f) = with_file(FILE);
        let env = env_of(&[("DDSVAULT_PROFILE_FILE", &f)]);
        let pick = |name: &str| {
            resolve(
                &ApiArgs {
                    profile: Some(name.into()),
                    ..Default::default()
                },
                &env,
            )
        };
        let e = pick("nope").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("prod, dev, sts"), "{e}");
        let e = pick("sts").unwrap_err();
        assert!(e.to_string().contains("StsToken"), "{e}");

        let (_d2, broken) = with_file("{\"profiles\": [");
        let e = resolve(
            &ApiArgs::default(),
            &env_of(&[("DDSVAULT_PROFILE_FILE", &broken)]),
        )
        .unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains("not valid"), "{e}");

        let e = resolve(
            &ApiArgs::default(),
            &env_of(&[("DDSVAULT_PROFILE_FILE", "/nonexistent/ddsvault.json")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("does not exist"), "{e}");
    }

    #[test]
    fn a_single_profile_needs_no_current_and_home_is_the_default_place() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(".ddsvault")).unwrap();
        std::fs::write(
            dir.path().join(".ddsvault/config.json"),
            r#"{"profiles": [{"name": "only", "access_key_id": "LTAIonly", "access_key_secret": "s"}]}"#,
        )
        .unwrap();
        let env = env_of(&[("HOME", dir.path().to_str().unwrap())]);
        let r = resolve(&ApiArgs::default(), &env).unwrap();
        assert_eq!(r.access_key_id, "LTAIonly");
        // No file at all under HOME: the missing-credential error, not a file error.
        let empty = tempfile::tempdir().unwrap();
        let e = resolve(
            &ApiArgs::default(),
            &env_of(&[("HOME", empty.path().to_str().unwrap())]),
        )
        .unwrap_err();
        assert!(matches!(e, CliError::Credentials(_)));
    }

    #[test]
    fn missing_or_half_credentials_say_how_to_give_them_and_never_show_a_secret() {
        let e = resolve(&ApiArgs::default(), &env_of(&[])).unwrap_err();
        assert_eq!(e.exit_code(), 2);
        let msg = e.to_string();
        for way in ["--access-key-id", "DDSVAULT_ACCESS_KEY_ID", "profile file"] {
            assert!(msg.contains(way), "{msg}");
        }
        let e = resolve(
            &ApiArgs::default(),
            &env_of(&[("DDSVAULT_ACCESS_KEY_SECRET", "very-secret-value")]),
        )
        .unwrap_err();
        assert!(e.to_string().contains("without its AccessKeyId"), "{e}");
        assert!(!e.to_string().contains("very-secret-value"));

        let r = resolve(
            &ApiArgs::default(),
            &env_of(&[
                ("DDSVAULT_ACCESS_KEY_ID", "LTAIx"),
                ("DDSVAULT_ACCESS_KEY_SECRET", "very-secret-value"),
            ]),
        )
        .unwrap();
        assert!(!format!("{r:?}").contains("very-secret-value"));
    }

    #[test]
    fn endpoints_are_normalised() {
        assert_eq!(
            normalize_endpoint("127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            normalize_endpoint("https://backup.example.com/").unwrap(),
            "https://backup.example.com"
        );
        assert_eq!(
            normalize_endpoint("http://[::1]:9").unwrap(),
            "http://[::1]:9"
        );
        for bad in ["ftp://x", "http://x/api", "http://", "http://u:p@x"] {
            assert_eq!(normalize_endpoint(bad).unwrap_err().exit_code(), 2, "{bad}");
        }
    }
}
