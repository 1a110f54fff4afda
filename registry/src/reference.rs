//! Image references in the spelling of skopeo's and podman's transports:
//! `oci:DIR[:REF]`, a bare directory (an OCI image layout, as before), and
//! `docker://HOST[:PORT]/REPO[:TAG|@sha256:HEX]`.
//!
//! Docker Hub's short names (`docker://alpine`, implied `docker.io` and
//! `library/`) are not resolved: the registry host must be written out, so a
//! reference never silently reaches a registry the user did not name.

use crate::digest::{Digest, DigestError};
use std::fmt;
use std::path::PathBuf;

/// Where an image comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ImageRef {
    /// An OCI image layout directory; `reference` picks a manifest in its
    /// `index.json` (a ref name or a digest), as `--ref` does.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The manifest to pick, if given after the directory.
        reference: Option<String>,
    },
    /// An image in a registry.
    Registry(RegistryRef),
}

/// `HOST[:PORT]/REPO` with a tag or a digest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegistryRef {
    /// `host` or `host:port` (`[v6]:port` for IPv6 literals), as written.
    pub registry: String,
    /// The repository path, e.g. `monogon/node`.
    pub repository: String,
    /// The tag or digest.
    pub target: Target,
}

/// What a registry reference names in its repository.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// A tag (`latest` when none is written).
    Tag(String),
    /// A manifest digest.
    Digest(Digest),
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::Tag(t) => f.write_str(t),
            Target::Digest(d) => write!(f, "{d}"),
        }
    }
}

/// A reference that cannot be parsed; each names the part that is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RefError {
    /// `oci:` with nothing after it.
    #[error("image reference {0:?}: oci: needs a directory (oci:DIR[:REF])")]
    EmptyDir(String),
    /// A transport skopeo knows but this tool does not serve from.
    #[error("image reference {reference:?}: transport {transport:?} is not supported (use oci:DIR[:REF], a directory, or docker://HOST/REPO[:TAG|@DIGEST])")]
    Transport {
        /// The whole reference.
        reference: String,
        /// The transport name.
        transport: String,
    },
    /// `docker://` without a `HOST/` part that names a registry.
    #[error("image reference {reference:?}: {reason}")]
    Host {
        /// The whole reference.
        reference: String,
        /// What is wrong with the host part.
        reason: String,
    },
    /// A repository path that the distribution spec does not allow.
    #[error("image reference {reference:?}: repository {repository:?}: {reason}")]
    Repository {
        /// The whole reference.
        reference: String,
        /// The repository part.
        repository: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A tag that the distribution spec does not allow.
    #[error("image reference {reference:?}: tag {tag:?}: a tag is 1 to 128 of [A-Za-z0-9_.-], not starting with . or -")]
    Tag {
        /// The whole reference.
        reference: String,
        /// The tag part.
        tag: String,
    },
    /// A digest that is not `sha256:<64 hex>`.
    #[error("image reference {reference:?}: its digest")]
    Digest {
        /// The whole reference.
        reference: String,
        /// Why the digest part is bad.
        source: DigestError,
    },
}

/// Transports of containers/image that are not served from.
const OTHER_TRANSPORTS: &[&str] = &[
    "containers-storage",
    "dir",
    "docker-archive",
    "docker-daemon",
    "oci-archive",
    "ostree",
    "sif",
    "tarball",
];

impl ImageRef {
    /// Parses an image reference (see the module documentation).
    pub fn parse(s: &str) -> Result<ImageRef, RefError> {
        if let Some(rest) = s.strip_prefix("docker://") {
            return RegistryRef::parse_with_context(rest, s).map(ImageRef::Registry);
        }
        if let Some(rest) = s.strip_prefix("oci:") {
            // containers/image splits at the first colon: the directory
            // cannot hold one, the reference may (a digest does).
            let (dir, reference) = match rest.split_once(':') {
                Some((dir, r)) => (dir, Some(r)),
                None => (rest, None),
            };
            if dir.is_empty() {
                return Err(RefError::EmptyDir(s.to_owned()));
            }
            return Ok(ImageRef::Layout {
                dir: PathBuf::from(dir),
                reference: reference.filter(|r| !r.is_empty()).map(str::to_owned),
            });
        }
        if let Some((transport, _)) = s.split_once(':') {
            if OTHER_TRANSPORTS.contains(&transport) || transport == "docker" {
                return Err(RefError::Transport {
                    reference: s.to_owned(),
                    transport: transport.to_owned(),
                });
            }
        }
        Ok(ImageRef::Layout {
            dir: PathBuf::from(s),
            reference: None,
        })
    }
}

impl RegistryRef {
    /// Parses `HOST[:PORT]/REPO[:TAG|@sha256:HEX]` (without `docker://`).
    pub fn parse(s: &str) -> Result<RegistryRef, RefError> {
        Self::parse_with_context(s, s)
    }

    fn parse_with_context(s: &str, whole: &str) -> Result<RegistryRef, RefError> {
        let host_err = |reason: &str| RefError::Host {
            reference: whole.to_owned(),
            reason: reason.to_owned(),
        };
        let Some((registry, rest)) = s.split_once('/') else {
            return Err(host_err(
                "expected HOST[:PORT]/REPO (Docker Hub short names are not resolved; write the registry host)",
            ));
        };
        check_host(registry).map_err(|r| host_err(&format!("registry {registry:?}: {r}")))?;
        // A digest is introduced by '@'; a tag by the last ':' after the last '/'.
        let (name, target) = if let Some((name, digest)) = rest.split_once('@') {
            let d = Digest::parse(digest).map_err(|source| RefError::Digest {
                reference: whole.to_owned(),
                source,
            })?;
            (name, Target::Digest(d))
        } else {
            let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
            match rest[last_slash..].rfind(':') {
                Some(i) => {
                    let tag = &rest[last_slash + i + 1..];
                    check_tag(tag).map_err(|()| RefError::Tag {
                        reference: whole.to_owned(),
                        tag: tag.to_owned(),
                    })?;
                    (&rest[..last_slash + i], Target::Tag(tag.to_owned()))
                }
                None => (rest, Target::Tag("latest".to_owned())),
            }
        };
        check_repository(name).map_err(|reason| RefError::Repository {
            reference: whole.to_owned(),
            repository: name.to_owned(),
            reason,
        })?;
        Ok(RegistryRef {
            registry: registry.to_owned(),
            repository: name.to_owned(),
            target,
        })
    }

    /// The host name without port or IPv6 brackets.
    pub fn host(&self) -> &str {
        host_of(&self.registry)
    }

    /// The same repository at another tag or digest.
    pub fn with_target(&self, target: Target) -> RegistryRef {
        RegistryRef {
            target,
            ..self.clone()
        }
    }
}

impl fmt::Display for RegistryRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.target {
            Target::Tag(t) => write!(f, "{}/{}:{}", self.registry, self.repository, t),
            Target::Digest(d) => write!(f, "{}/{}@{}", self.registry, self.repository, d),
        }
    }
}

/// The host of `host[:port]` / `[v6]:port`, without port and brackets.
pub fn host_of(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(h, _)| h);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

/// Whether a registry host is this machine, where plain HTTP is allowed.
pub fn is_loopback(registry: &str) -> bool {
    matches!(host_of(registry), "localhost" | "127.0.0.1" | "::1")
}

fn check_host(registry: &str) -> Result<(), String> {
    if registry.is_empty() {
        return Err("empty".into());
    }
    let (host, port) = if let Some(rest) = registry.strip_prefix('[') {
        let (h, after) = rest
            .split_once(']')
            .ok_or_else(|| "unclosed '[' in an IPv6 address".to_string())?;
        if h.is_empty() || !h.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
            return Err(format!("{h:?} is not an IPv6 address"));
        }
        match after {
            "" => (h, None),
            p => (
                h,
                Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("unexpected {p:?} after ']'"))?,
                ),
            ),
        }
    } else {
        match registry.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (registry, None),
        }
    };
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |p| p == 0) {
            return Err(format!("port {p:?} is not a number from 1 to 65535"));
        }
    }
    if !registry.starts_with('[') {
        if host.is_empty()
            || !host
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(format!("host {host:?} is not a host name or address"));
        }
        // Without a dot, a port or "localhost" the first path element is a
        // Docker Hub namespace, not a host (the rule docker and skopeo use).
        if !host.contains('.') && port.is_none() && host != "localhost" {
            return Err(format!(
                "{host:?} is not a registry host (Docker Hub short names are not resolved; write the registry host, e.g. docker.io/{host}/…)"
            ));
        }
    }
    Ok(())
}

fn check_repository(name: &str) -> Result<(), &'static str> {
    if name.is_empty() {
        return Err("empty");
    }
    if name.len() > 255 {
        return Err("longer than 255 characters");
    }
    for comp in name.split('/') {
        let b = comp.as_bytes();
        if b.is_empty() {
            return Err("empty path component");
        }
        if !b.iter().all(|&c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'_' | b'-')
        }) {
            return Err("only lowercase letters, digits and . _ - are allowed");
        }
        let alnum = |c: &u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !b.first().is_some_and(alnum) || !b.last().is_some_and(alnum) {
            return Err("each path component starts and ends with a letter or digit");
        }
    }
    Ok(())
}

fn check_tag(tag: &str) -> Result<(), ()> {
    let b = tag.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 128
        && (b[0].is_ascii_alphanumeric() || b[0] == b'_')
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || matches!(c, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reg(s: &str) -> RegistryRef {
        match ImageRef::parse(s) {
            Ok(ImageRef::Registry(r)) => r,
            other => panic!("{s}: {other:?}"),
        }
    }

    const HEX: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn docker_references() {
        let r = reg("docker://127.0.0.1:5000/monogon/node:v1.2");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.host(), "127.0.0.1");
        assert_eq!(r.repository, "monogon/node");
        assert_eq!(r.target, Target::Tag("v1.2".into()));
        assert!(is_loopback(&r.registry));

        let r = reg("docker://registry.example.com/os");
        assert_eq!(r.target, Target::Tag("latest".into()));
        assert!(!is_loopback(&r.registry));
        assert_eq!(r.to_string(), "registry.example.com/os:latest");

        let r = reg(&format!("docker://localhost/a/b@sha256:{HEX}"));
        assert_eq!(r.registry, "localhost");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.target.to_string(), format!("sha256:{HEX}"));

        let r = reg("docker://[::1]:5000/os:t");
        assert_eq!(r.host(), "::1");
        assert!(is_loopback(&r.registry));
    }

    #[test]
    fn layout_references() {
        assert_eq!(
            ImageRef::parse("oci:/srv/img:node").unwrap(),
            ImageRef::Layout {
                dir: "/srv/img".into(),
                reference: Some("node".into())
            }
        );
        assert_eq!(
            ImageRef::parse(&format!("oci:img:sha256:{HEX}")).unwrap(),
            ImageRef::Layout {
                dir: "img".into(),
                reference: Some(format!("sha256:{HEX}"))
            }
        );
        assert_eq!(
            ImageRef::parse("oci:img").unwrap(),
            ImageRef::Layout {
                dir: "img".into(),
                reference: None
            }
        );
        // A bare directory, as before transports existed.
        assert_eq!(
            ImageRef::parse("path/to/oci-layout").unwrap(),
            ImageRef::Layout {
                dir: "path/to/oci-layout".into(),
                reference: None
            }
        );
    }

    #[test]
    fn errors_name_the_bad_part() {
        let e = ImageRef::parse("oci:").unwrap_err();
        assert!(matches!(e, RefError::EmptyDir(_)), "{e}");

        let e = ImageRef::parse("docker-archive:x.tar").unwrap_err();
        assert!(e.to_string().contains("\"docker-archive\""), "{e}");

        let e = ImageRef::parse("docker://alpine").unwrap_err();
        assert!(e.to_string().contains("HOST[:PORT]/REPO"), "{e}");
        let e = ImageRef::parse("docker://library/alpine").unwrap_err();
        assert!(
            e.to_string().contains("\"library\" is not a registry host"),
            "{e}"
        );
        let e = ImageRef::parse("docker://host:99999/a").unwrap_err();
        assert!(e.to_string().contains("port \"99999\""), "{e}");
        let e = ImageRef::parse("docker://ho_st.com/a").unwrap_err();
        assert!(e.to_string().contains("host \"ho_st.com\""), "{e}");

        let e = ImageRef::parse("docker://h.io/Upper/case").unwrap_err();
        assert!(e.to_string().contains("repository \"Upper/case\""), "{e}");
        let e = ImageRef::parse("docker://h.io/a//b").unwrap_err();
        assert!(e.to_string().contains("empty path component"), "{e}");
        let e = ImageRef::parse("docker://h.io/").unwrap_err();
        assert!(matches!(e, RefError::Repository { .. }), "{e}");

        let e = ImageRef::parse("docker://h.io/a:-bad").unwrap_err();
        assert!(e.to_string().contains("tag \"-bad\""), "{e}");
        let e = ImageRef::parse("docker://h.io/a:").unwrap_err();
        assert!(matches!(e, RefError::Tag { .. }), "{e}");

        let e = ImageRef::parse("docker://h.io/a@sha256:abc").unwrap_err();
        assert!(e.to_string().contains("sha256:abc"), "{e}");
        let e = ImageRef::parse("docker://h.io/a@md5:abc").unwrap_err();
        let chain = blockio::error_chain(&e).to_string();
        assert!(chain.contains("a@md5:abc"), "{chain}");
        assert!(chain.contains("only sha256"), "{chain}");
    }

    #[test]
    fn port_colon_is_not_a_tag() {
        let r = reg("docker://h.io:5000/a/b");
        assert_eq!(r.registry, "h.io:5000");
        assert_eq!(r.repository, "a/b");
        assert_eq!(r.target, Target::Tag("latest".into()));
    }
}
