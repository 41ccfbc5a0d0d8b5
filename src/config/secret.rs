//! Secret references (`env:NAME`, `file:PATH`, `cred:NAME`) and the resolved
//! [`Secret`] type.
//!
//! A secret never appears in the config file itself, only a reference to where it
//! lives. Once resolved, the value is held in a type that has no `Display`, a
//! redacting `Debug` and no `Serialize`, so it cannot reach a log line or a JSON
//! body by accident; code that needs the bytes asks for them explicitly.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// A resolved secret value. Its `Debug` output is always `Secret(***)`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret's bytes, for the one place that needs them (an HMAC key, a token
    /// comparison). Deliberately not `Deref`/`AsRef`, so each use is visible.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// Where a secret lives, as written in the config file.
#[derive(Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SecretRef(String);

/// How a [`SecretRef`] names its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretSource<'a> {
    /// The empty string: "not set".
    Unset,
    Env(&'a str),
    File(&'a str),
    Credential(&'a str),
    /// The value itself was written into the config: accepted, with a warning.
    Literal,
}

impl SecretRef {
    pub fn new(reference: impl Into<String>) -> Self {
        Self(reference.into())
    }

    pub fn source(&self) -> SecretSource<'_> {
        let raw = self.0.as_str();
        if raw.is_empty() {
            SecretSource::Unset
        } else if let Some(name) = raw.strip_prefix("env:") {
            SecretSource::Env(name)
        } else if let Some(path) = raw.strip_prefix("file:") {
            SecretSource::File(path)
        } else if let Some(name) = raw.strip_prefix("cred:") {
            SecretSource::Credential(name)
        } else {
            SecretSource::Literal
        }
    }

    /// The reference as an operator may see it: the reference itself, or
    /// `<literal>` when the config holds the value.
    pub fn describe(&self) -> String {
        match self.source() {
            SecretSource::Unset => "(not set)".to_owned(),
            SecretSource::Literal => "<literal value>".to_owned(),
            _ => self.0.clone(),
        }
    }
}

impl fmt::Debug for SecretRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretRef({})", self.describe())
    }
}

/// What the resolver may look at: the process environment and the folder that
/// relative `file:` paths are relative to. Passed in, so tests need no globals.
#[derive(Debug, Clone, Default)]
pub struct SecretEnv {
    pub vars: std::collections::BTreeMap<String, String>,
    pub base_dir: PathBuf,
}

impl SecretEnv {
    fn var(&self, name: &str) -> Option<&str> {
        self.vars
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
}

/// Why a reference could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    EnvMissing(String),
    #[error("cannot read secret file {path}: {reason}")]
    FileUnreadable { path: String, reason: String },
    #[error("secret file {0} is empty")]
    FileEmpty(String),
    #[error("cred:{0} needs $CREDENTIALS_DIRECTORY, which is not set (is the service started by systemd with LoadCredential?)")]
    NoCredentialsDirectory(String),
    #[error("is required but not set")]
    Required,
}

/// The outcome of resolving one reference.
#[derive(Debug)]
pub struct Resolved {
    pub value: Option<Secret>,
    /// True when the value was written into the config file.
    pub literal: bool,
}

/// Resolves `reference`. A required secret must resolve to a value. An optional
/// `env:` reference whose variable is unset counts as not set; `file:` and `cred:`
/// state an intent, so a missing file is an error even for an optional secret.
pub fn resolve(
    reference: &SecretRef,
    required: bool,
    env: &SecretEnv,
) -> Result<Resolved, SecretError> {
    let value = match reference.source() {
        SecretSource::Unset => None,
        SecretSource::Literal => {
            return Ok(Resolved {
                value: Some(Secret::new(reference.0.clone())),
                literal: true,
            })
        }
        SecretSource::Env(name) => match env.var(name) {
            Some(v) => Some(Secret::new(v)),
            None if required => return Err(SecretError::EnvMissing(name.to_owned())),
            None => None,
        },
        SecretSource::File(path) => Some(read_secret_file(&env.base_dir.join(path))?),
        SecretSource::Credential(name) => {
            let dir = env
                .var("CREDENTIALS_DIRECTORY")
                .ok_or_else(|| SecretError::NoCredentialsDirectory(name.to_owned()))?;
            Some(read_secret_file(&Path::new(dir).join(name))?)
        }
    };
    match value {
        None if required => Err(SecretError::Required),
        value => Ok(Resolved {
            value,
            literal: false,
        }),
    }
}

fn read_secret_file(path: &Path) -> Result<Secret, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|e| SecretError::FileUnreadable {
        path: path.display().to_string(),
        reason: e.to_string(),
    })?;
    // Files written by `echo` or editors end in a newline that is not part of the secret.
    let trimmed = text.trim_end_matches(['\n', '\r']);
    if trimmed.is_empty() {
        return Err(SecretError::FileEmpty(path.display().to_string()));
    }
    Ok(Secret::new(trimmed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_with(vars: &[(&str, &str)], base_dir: &Path) -> SecretEnv {
        SecretEnv {
            vars: vars
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            base_dir: base_dir.to_path_buf(),
        }
    }

    #[test]
    fn debug_output_never_shows_the_value() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret:?}"), "Secret(***)");
        let literal = SecretRef::new("hunter2");
        assert!(!format!("{literal:?}").contains("hunter2"));
    }

    #[test]
    fn env_reference_reads_the_variable() {
        let env = env_with(&[("WH", "s3cret")], Path::new("."));
        let r = resolve(&SecretRef::new("env:WH"), true, &env).unwrap();
        assert_eq!(r.value.unwrap().expose(), "s3cret");
        assert!(!r.literal);
    }

    #[test]
    fn missing_env_is_an_error_only_when_required() {
        let env = env_with(&[("EMPTY", "")], Path::new("."));
        assert_eq!(
            resolve(&SecretRef::new("env:NOPE"), true, &env).unwrap_err(),
            SecretError::EnvMissing("NOPE".into())
        );
        assert!(resolve(&SecretRef::new("env:NOPE"), false, &env)
            .unwrap()
            .value
            .is_none());
        // An empty variable is as good as an unset one.
        assert!(resolve(&SecretRef::new("env:EMPTY"), true, &env).is_err());
    }

    #[test]
    fn file_reference_is_relative_to_the_config_folder_and_trims_the_newline() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("wh.secret"), "from-file\n").unwrap();
        let env = env_with(&[], dir.path());
        let r = resolve(&SecretRef::new("file:wh.secret"), true, &env).unwrap();
        assert_eq!(r.value.unwrap().expose(), "from-file");
        // Stated intent: a missing file is an error even for an optional secret.
        assert!(matches!(
            resolve(&SecretRef::new("file:absent"), false, &env),
            Err(SecretError::FileUnreadable { .. })
        ));
    }

    #[test]
    fn credential_reference_reads_from_the_systemd_credentials_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("webhook"), "cred-value").unwrap();
        let creds = dir.path().to_string_lossy().to_string();
        let env = env_with(&[("CREDENTIALS_DIRECTORY", &creds)], Path::new("/"));
        let r = resolve(&SecretRef::new("cred:webhook"), true, &env).unwrap();
        assert_eq!(r.value.unwrap().expose(), "cred-value");

        let no_dir = env_with(&[], Path::new("/"));
        assert!(matches!(
            resolve(&SecretRef::new("cred:webhook"), true, &no_dir),
            Err(SecretError::NoCredentialsDirectory(_))
        ));
    }

    #[test]
    fn literal_is_accepted_but_flagged_and_empty_means_unset() {
        let env = SecretEnv::default();
        let r = resolve(&SecretRef::new("plain-text"), true, &env).unwrap();
        assert!(r.literal);
        assert_eq!(r.value.unwrap().expose(), "plain-text");
        assert!(resolve(&SecretRef::new(""), false, &env)
            .unwrap()
            .value
            .is_none());
        assert_eq!(
            resolve(&SecretRef::new(""), true, &env).unwrap_err(),
            SecretError::Required
        );
    }
}
