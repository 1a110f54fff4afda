//! Registry credentials: given as `user:password`, or looked up in the
//! files skopeo and podman read, in their order: `$REGISTRY_AUTH_FILE`,
//! `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
//! `~/.docker/config.json`. The first file with an entry for the registry
//! wins; within a file, the most specific key (`host/ns/repo` before
//! `host/ns` before `host`) wins, as containers/image matches them.
//!
//! Credential helpers (`credHelpers`, `credsStore`) are not run: an entry
//! that only names a helper is skipped (said in the debug log).

use base64::Engine as _;
use std::fmt;
use std::path::{Path, PathBuf};

/// A user name and password (or identity token as password).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The user name.
    pub username: String,
    /// The password.
    pub password: String,
}

// The password never reaches a log line.
impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

/// Credentials that cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    /// `--creds` without a colon.
    #[error("credentials must be USER:PASSWORD (no ':' found)")]
    NoColon,
    /// An auth file that exists but cannot be read.
    #[error("reading the auth file {path}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The read error.
        source: std::io::Error,
    },
    /// An auth file that is not the JSON it should be.
    #[error("auth file {path}: {reason}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What is wrong, naming the entry where there is one.
        reason: String,
    },
}

impl Credentials {
    /// Parses `user:password` (the password may hold colons).
    pub fn parse(s: &str) -> Result<Credentials, CredentialsError> {
        let (u, p) = s.split_once(':').ok_or(CredentialsError::NoColon)?;
        Ok(Credentials {
            username: u.to_owned(),
            password: p.to_owned(),
        })
    }

    /// The value of a `Basic` Authorization header.
    pub fn basic_header(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// The auth files skopeo reads, in its order, from the environment.
pub fn default_auth_files() -> Vec<PathBuf> {
    let mut files = Vec::new();
    if let Some(f) = std::env::var_os("REGISTRY_AUTH_FILE").filter(|v| !v.is_empty()) {
        files.push(PathBuf::from(f));
    }
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|v| !v.is_empty()) {
        files.push(Path::new(&d).join("containers/auth.json"));
    }
    if let Some(home) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
        let home = Path::new(&home);
        files.push(home.join(".config/containers/auth.json"));
        files.push(home.join(".docker/config.json"));
    }
    files
}

/// Looks up credentials for `registry` (`host[:port]`) and `repository` in
/// `files`, in order. Missing files are skipped; unreadable or malformed
/// ones are errors (credentials silently ignored would turn into a
/// puzzling 401 later).
pub fn lookup(
    files: &[PathBuf],
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    for path in files {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(source) => {
                return Err(CredentialsError::Read {
                    path: path.clone(),
                    source,
                })
            }
        };
        if let Some(c) = lookup_in(path, &text, registry, repository)? {
            tracing::debug!(file = %path.display(), registry, "registry credentials found");
            return Ok(Some(c));
        }
    }
    Ok(None)
}

fn lookup_in(
    path: &Path,
    text: &str,
    registry: &str,
    repository: &str,
) -> Result<Option<Credentials>, CredentialsError> {
    let perr = |reason: String| CredentialsError::Parse {
        path: path.to_owned(),
        reason,
    };
    let json: serde_json::Value =
        serde_json::from_str(text).map_err(|e| perr(format!("not JSON: {e}")))?;
    let Some(auths) = json.get("auths") else {
        return Ok(None);
    };
    let auths = auths
        .as_object()
        .ok_or_else(|| perr("\"auths\" is not an object".into()))?;
    // Normalised keys: Docker's files may say https://host/v1/.
    let entries: Vec<(String, &serde_json::Value)> =
        auths.iter().map(|(k, v)| (normalise_key(k), v)).collect();
    let mut wanted = vec![format!("{registry}/{repository}")];
    let mut ns = repository;
    while let Some((parent, _)) = ns.rsplit_once('/') {
        wanted.push(format!("{registry}/{parent}"));
        ns = parent;
    }
    wanted.push(registry.to_owned());
    for key in &wanted {
        let Some((orig, entry)) = entries.iter().find(|(k, _)| k == key) else {
            continue;
        };
        let Some(auth) = entry.get("auth") else {
            tracing::debug!(file = %path.display(), key = %orig, "auth entry without \"auth\" (a credential helper?) skipped");
            continue;
        };
        let auth = auth
            .as_str()
            .ok_or_else(|| perr(format!("auths.{orig}.auth is not a string")))?;
        if auth.is_empty() {
            continue;
        }
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| perr(format!("auths.{orig}.auth is not base64: {e}")))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| perr(format!("auths.{orig}.auth is not UTF-8 once decoded")))?;
        let c = Credentials::parse(&raw).map_err(|_| {
            perr(format!(
                "auths.{orig}.auth does not decode to user:password"
            ))
        })?;
        return Ok(Some(c));
    }
    Ok(None)
}

fn normalise_key(k: &str) -> String {
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    // Docker's legacy keys: https://index.docker.io/v1/
    let k = k.trim_end_matches('/');
    let k = k
        .strip_suffix("/v1")
        .or_else(|| k.strip_suffix("/v2"))
        .unwrap_or(k);
    k.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn parse_explicit() {
        let c = Credentials::parse("u:p:with:colons").unwrap();
        assert_eq!(c.username, "u");
        assert_eq!(c.password, "p:with:colons");
        assert!(matches!(
            Credentials::parse("nocolon"),
            Err(CredentialsError::NoColon)
        ));
        assert!(!format!("{c:?}").contains("colons"));
        assert_eq!(
            c.basic_header(),
            format!("Basic {}", b64("u:p:with:colons"))
        );
    }

    #[test]
    fn files_in_order_most_specific_key_first() {
        let dir = tempfile::tempdir().unwrap();
        let first = dir.path().join("first.json");
        let second = dir.path().join("second.json");
        let missing = dir.path().join("missing.json");
        std::fs::write(
            &first,
            format!(
                r#"{{"auths": {{"other.io": {{"auth": "{}"}},
                    "r.io:5000": {{"auth": "{}"}},
                    "r.io:5000/team": {{"auth": "{}"}}}}}}"#,
                b64("o:o"),
                b64("host:h"),
                b64("team:t")
            ),
        )
        .unwrap();
        std::fs::write(
            &second,
            format!(
                r#"{{"auths": {{"https://docker.example/v1/": {{"auth": "{}"}}}}}}"#,
                b64("d:d")
            ),
        )
        .unwrap();
        let files = vec![missing, first, second];
        let c = lookup(&files, "r.io:5000", "team/app").unwrap().unwrap();
        assert_eq!(c.username, "team");
        let c = lookup(&files, "r.io:5000", "else/app").unwrap().unwrap();
        assert_eq!(c.username, "host");
        let c = lookup(&files, "docker.example", "x").unwrap().unwrap();
        assert_eq!(c.username, "d");
        assert!(lookup(&files, "none.io", "x").unwrap().is_none());
    }

    #[test]
    fn malformed_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("auth.json");
        std::fs::write(&f, "{not json").unwrap();
        let e = lookup(std::slice::from_ref(&f), "r.io", "a").unwrap_err();
        assert!(e.to_string().contains("auth.json: not JSON"), "{e}");
        std::fs::write(&f, r#"{"auths": {"r.io": {"auth": "%%%"}}}"#).unwrap();
        let e = lookup(std::slice::from_ref(&f), "r.io", "a").unwrap_err();
        assert!(
            e.to_string().contains("auths.r.io.auth is not base64"),
            "{e}"
        );
        std::fs::write(
            &f,
            format!(
                r#"{{"auths": {{"r.io": {{"auth": "{}"}}}}}}"#,
                b64("nocolon")
            ),
        )
        .unwrap();
        let e = lookup(std::slice::from_ref(&f), "r.io", "a").unwrap_err();
        assert!(e.to_string().contains("user:password"), "{e}");
        // A helper-only entry is not an error, just no credentials.
        std::fs::write(&f, r#"{"auths": {"r.io": {}}, "credsStore": "desktop"}"#).unwrap();
        assert!(lookup(std::slice::from_ref(&f), "r.io", "a")
            .unwrap()
            .is_none());
    }
}
