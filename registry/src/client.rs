//! The HTTP side: one ureq agent, the scheme of each registry (HTTPS, or
//! HTTP where allowed), authentication (basic, or bearer tokens fetched on
//! a challenge and renewed on a 401), redirects, and retries with
//! exponential backoff.

use crate::challenge::{self, Challenge};
use crate::credentials::{self, Credentials};
use crate::error::{At, RegistryError};
use crate::options::ClientOptions;
use crate::outage::Outages;
use crate::reference::is_loopback;
use crate::stats::ClientStats;
use std::collections::HashMap;
use std::io::Read;
use std::sync::{Arc, Mutex};
use ureq::http::{Response, Uri};
use ureq::Body;

/// A client of OCI distribution registries. Cheap to share between threads
/// (`&Client` is enough; everything mutable is behind locks or atomics).
pub struct Client {
    agent: ureq::Agent,
    pub(crate) opts: ClientOptions,
    stats: Arc<ClientStats>,
    /// `https` or `http` per registry, once a ping has said which works.
    /// Shared with the clients [`Client::for_chunk_cache`] makes.
    schemes: Arc<Mutex<HashMap<String, &'static str>>>,
    /// The Authorization header value per (registry, repository); shared
    /// like `schemes`, so a token fetched by one is used by the other.
    auth: Arc<Mutex<HashMap<(String, String), String>>>,
    /// Registries that gave no answer moments ago, which chunk fetches
    /// skip for a while; shared like `schemes`.
    outages: Arc<Outages>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// A request's repository scope, for auth and error messages.
#[derive(Debug, Clone)]
pub(crate) struct Repo<'a> {
    pub registry: &'a str,
    pub repository: &'a str,
}

impl Repo<'_> {
    pub(crate) fn at(&self, object: impl Into<String>) -> At {
        At::new(self.registry, self.repository, object)
    }
}

impl Client {
    /// A client with these options; reads the extra CA file now, so a bad
    /// one is an error here rather than on the first request.
    pub fn new(opts: ClientOptions) -> Result<Client, RegistryError> {
        let roots = root_certs(opts.extra_ca.as_deref())?;
        let tls = ureq::tls::TlsConfig::builder()
            .root_certs(ureq::tls::RootCerts::Specific(Arc::new(roots)))
            .build();
        let config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            // Redirects are followed here, to decide about Authorization.
            .max_redirects(0)
            .timeout_connect(Some(opts.connect_timeout))
            .timeout_recv_response(Some(opts.read_timeout))
            .timeout_per_read(Some(opts.read_timeout))
            .user_agent(concat!("ocidisk-registry/", env!("CARGO_PKG_VERSION")))
            .tls_config(tls)
            .build();
        Ok(Client {
            agent: config.into(),
            opts,
            stats: Arc::new(ClientStats::default()),
            schemes: Arc::default(),
            auth: Arc::default(),
            outages: Arc::default(),
        })
    }

    /// A client for filling a chunk cache, which has its own attempt
    /// budget per chunk (see [`ClientOptions::for_chunk_cache`]), sharing
    /// this one's connections, counters, schemes and tokens. Resolving a
    /// manifest keeps the full retry setting of `self`.
    pub fn for_chunk_cache(&self) -> Client {
        Client {
            agent: self.agent.clone(),
            opts: self.opts.clone().for_chunk_cache(),
            stats: Arc::clone(&self.stats),
            schemes: Arc::clone(&self.schemes),
            auth: Arc::clone(&self.auth),
            outages: Arc::clone(&self.outages),
        }
    }

    /// The registries chunk fetches rest from after they gave no answer.
    pub(crate) fn outages(&self) -> &Outages {
        &self.outages
    }

    /// The counters of this client (shared; read them any time).
    pub fn stats(&self) -> &Arc<ClientStats> {
        &self.stats
    }

    fn credentials(&self, repo: &Repo<'_>) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = &self.opts.credentials {
            return Ok(Some(c.clone()));
        }
        let files = match &self.opts.auth_files {
            Some(f) => f.clone(),
            None => credentials::default_auth_files(),
        };
        Ok(credentials::lookup(&files, repo.registry, repo.repository)?)
    }

    fn insecure_allowed(&self, registry: &str) -> bool {
        is_loopback(registry)
            || self
                .opts
                .insecure_registries
                .iter()
                .any(|h| h == registry || h == crate::reference::host_of(registry))
    }

    /// The scheme to reach `registry` with: HTTPS; plain HTTP only for
    /// loopback or declared-insecure registries whose HTTPS does not answer
    /// (Docker's rule for insecure registries). Found by `GET /v2/` once.
    fn scheme(&self, repo: &Repo<'_>, at: &At) -> Result<&'static str, RegistryError> {
        if let Some(s) = lock(&self.schemes).get(repo.registry) {
            return Ok(s);
        }
        let at = at.clone();
        let https = format!("https://{}/v2/", repo.registry);
        let scheme = match self.agent.get(&https).call() {
            Ok(_) => "https",
            Err(e) if is_no_answer(&e) => {
                return Err(RegistryError::Transport {
                    at,
                    url: https,
                    source: Box::new(e),
                })
            }
            Err(e) => {
                // HTTPS failed in a way an HTTP-only server causes.
                if !self.insecure_allowed(repo.registry) {
                    return Err(RegistryError::InsecureRefused {
                        registry: repo.registry.to_owned(),
                        reason: format!("{https}: {e}"),
                    });
                }
                let http = format!("http://{}/v2/", repo.registry);
                match self.agent.get(&http).call() {
                    // A TLS server answers an HTTP request with 400; a
                    // registry's /v2/ says 200 or 401.
                    Ok(r) if matches!(r.status().as_u16(), 200 | 401) => {
                        tracing::debug!(registry = repo.registry, "using plain HTTP");
                        "http"
                    }
                    // The HTTPS error says more (e.g. a certificate problem).
                    _ => {
                        return Err(RegistryError::Transport {
                            at,
                            url: https,
                            source: Box::new(e),
                        })
                    }
                }
            }
        };
        lock(&self.schemes).insert(repo.registry.to_owned(), scheme);
        Ok(scheme)
    }

    /// `scheme://registry/v2/repository/<path>`.
    pub(crate) fn url(
        &self,
        repo: &Repo<'_>,
        at: &At,
        path: &str,
    ) -> Result<String, RegistryError> {
        let scheme = self.scheme(repo, at)?;
        Ok(format!(
            "{scheme}://{}/v2/{}/{path}",
            repo.registry, repo.repository
        ))
    }

    /// One attempt of a GET: follows redirects (sending Authorization only
    /// to the registry itself) and answers one 401 by authenticating and
    /// asking again. Returns the final answer, whatever its status.
    pub(crate) fn get_once(
        &self,
        repo: &Repo<'_>,
        at: &At,
        url: &str,
        headers: &[(&str, String)],
    ) -> Result<Response<Body>, RegistryError> {
        let key = (repo.registry.to_owned(), repo.repository.to_owned());
        let mut url = url.to_owned();
        let mut same_host = true;
        let mut redirects = 0;
        let mut reauthed = false;
        loop {
            let mut req = self.agent.get(&url);
            for (k, v) in headers {
                req = req.header(*k, v.as_str());
            }
            let sent_auth = if same_host {
                lock(&self.auth).get(&key).cloned()
            } else {
                None
            };
            if let Some(a) = &sent_auth {
                req = req.header("Authorization", a.as_str());
            }
            let resp = req.call().map_err(|e| RegistryError::Transport {
                at: at.clone(),
                url: url.clone(),
                source: Box::new(e),
            })?;
            let status = resp.status().as_u16();
            if matches!(status, 301 | 302 | 303 | 307 | 308) {
                redirects += 1;
                if redirects > self.opts.max_redirects {
                    return Err(RegistryError::BadResponse {
                        at: at.clone(),
                        reason: format!("more than {} redirects", self.opts.max_redirects),
                    });
                }
                let next =
                    redirect_target(&url, &resp).ok_or_else(|| RegistryError::BadResponse {
                        at: at.clone(),
                        reason: format!("HTTP {status} without a usable Location"),
                    })?;
                // Credentials for the registry are not the blob store's.
                same_host = same_host && authority(&next) == authority(&url);
                tracing::debug!(from = %url, to = %next, keep_auth = same_host, "redirect");
                url = next;
                continue;
            }
            if status == 401 && same_host && !reauthed {
                let challenge = resp
                    .headers()
                    .get_all("www-authenticate")
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .filter_map(challenge::parse)
                    // A bearer challenge is preferred over basic.
                    .max_by_key(|c| matches!(c, Challenge::Bearer { .. }));
                let Some(challenge) = challenge else {
                    return Err(RegistryError::Unauthorized {
                        at: at.clone(),
                        status,
                        reason: "no Basic or Bearer challenge in WWW-Authenticate".into(),
                    });
                };
                if sent_auth.is_some() {
                    tracing::info!(
                        registry = repo.registry,
                        repository = repo.repository,
                        "registry answered 401 to our credentials or token; authenticating again"
                    );
                }
                let header = self.authenticate(repo, at, &challenge)?;
                lock(&self.auth).insert(key.clone(), header);
                reauthed = true;
                continue;
            }
            if status == 401 {
                let reason = if reauthed {
                    "credentials or token refused"
                } else {
                    "refused at a redirect target"
                };
                return Err(RegistryError::Unauthorized {
                    at: at.clone(),
                    status,
                    reason: reason.into(),
                });
            }
            return Ok(resp);
        }
    }

    /// Answers a challenge: a Basic header from the credentials, or a
    /// Bearer token from the token endpoint (with the credentials, if any;
    /// anonymous otherwise).
    fn authenticate(
        &self,
        repo: &Repo<'_>,
        at: &At,
        challenge: &Challenge,
    ) -> Result<String, RegistryError> {
        let creds = self.credentials(repo)?;
        match challenge {
            Challenge::Basic => match creds {
                Some(c) => Ok(c.basic_header()),
                None => Err(RegistryError::Unauthorized {
                    at: at.clone(),
                    status: 401,
                    reason: "the registry wants basic auth and no credentials were given (--creds or an auth file)".into(),
                }),
            },
            Challenge::Bearer {
                realm,
                service,
                scope,
            } => {
                let scope = scope
                    .clone()
                    .unwrap_or_else(|| format!("repository:{}:pull", repo.repository));
                let mut req = self.agent.get(realm).query("scope", &scope);
                if let Some(s) = service {
                    req = req.query("service", s);
                }
                if let Some(c) = &creds {
                    req = req.header("Authorization", c.basic_header());
                }
                let token_at = || at.with_object(format!("token from {realm}"));
                let mut resp = req.call().map_err(|e| RegistryError::Transport {
                    at: token_at(),
                    url: realm.clone(),
                    source: Box::new(e),
                })?;
                ClientStats::add(&self.stats.token_fetches, 1);
                let status = resp.status().as_u16();
                if status != 200 {
                    let detail = error_detail(&mut resp);
                    return Err(if status == 401 || status == 403 {
                        RegistryError::Unauthorized {
                            at: token_at(),
                            status,
                            reason: format!(
                                "token endpoint refused {}{}",
                                if creds.is_some() {
                                    "the credentials"
                                } else {
                                    "anonymous access (no credentials found)"
                                },
                                if detail.is_empty() {
                                    String::new()
                                } else {
                                    format!(": {detail}")
                                }
                            ),
                        }
                    } else {
                        RegistryError::Status {
                            at: token_at(),
                            status,
                            detail,
                            retry_after: None,
                        }
                    });
                }
                let body = read_limited(&mut resp, 1 << 20).map_err(|e| {
                    RegistryError::BadResponse {
                        at: token_at(),
                        reason: format!("reading the token: {e}"),
                    }
                })?;
                #[derive(serde::Deserialize)]
                struct Token {
                    token: Option<String>,
                    access_token: Option<String>,
                }
                let t: Token =
                    serde_json::from_slice(&body).map_err(|e| RegistryError::BadResponse {
                        at: token_at(),
                        reason: format!("token answer is not JSON: {e}"),
                    })?;
                let token = t.token.or(t.access_token).filter(|t| !t.is_empty()).ok_or_else(
                    || RegistryError::BadResponse {
                        at: token_at(),
                        reason: "token answer has neither \"token\" nor \"access_token\"".into(),
                    },
                )?;
                tracing::debug!(realm = %realm, scope = %scope, "bearer token fetched");
                Ok(format!("Bearer {token}"))
            }
        }
    }

    /// Runs `op` until it succeeds, fails for good, or the retries are
    /// used up, waiting `backoff_initial`, doubling to `backoff_max`,
    /// between attempts. `corrupt_too`: whether a digest or size mismatch
    /// is worth another attempt (where the bytes can be thrown away).
    pub(crate) fn with_retries<T>(
        &self,
        at: &At,
        corrupt_too: bool,
        mut op: impl FnMut() -> Result<T, RegistryError>,
    ) -> Result<T, RegistryError> {
        let mut delay = self.opts.backoff_initial;
        let mut attempt = 1u32;
        loop {
            match op() {
                Ok(v) => {
                    ClientStats::add(&self.stats.fetches, 1);
                    return Ok(v);
                }
                Err(e) if attempt <= self.opts.retries && e.is_transient(corrupt_too) => {
                    ClientStats::add(&self.stats.retries, 1);
                    // A registry's Retry-After is honoured up to backoff_max.
                    if let Some(ra) = e.retry_after() {
                        delay = delay.max(ra).min(self.opts.backoff_max);
                    }
                    tracing::warn!(
                        what = %at,
                        attempt,
                        retry_in_ms = delay.as_millis() as u64,
                        error = %blockio::error_chain(&e),
                        "registry fetch failed; retrying"
                    );
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(self.opts.backoff_max);
                    attempt += 1;
                }
                Err(e) => {
                    ClientStats::add(&self.stats.failures, 1);
                    tracing::warn!(what = %at, attempts = attempt, error = %blockio::error_chain(&e), "registry fetch failed");
                    return Err(if attempt > 1 {
                        RegistryError::GaveUp {
                            attempts: attempt,
                            source: Box::new(e),
                        }
                    } else {
                        e
                    });
                }
            }
        }
    }

    /// Turns an unsuccessful answer into its error.
    pub(crate) fn status_error(at: &At, resp: &mut Response<Body>) -> RegistryError {
        let status = resp.status().as_u16();
        // Only the delay-seconds form; an HTTP date is rare from registries.
        let retry_after = resp
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(std::time::Duration::from_secs);
        let detail = error_detail(resp);
        match status {
            404 => RegistryError::NotFound {
                at: at.clone(),
                detail,
            },
            401 | 403 => RegistryError::Unauthorized {
                at: at.clone(),
                status,
                reason: if detail.is_empty() {
                    "refused".into()
                } else {
                    detail
                },
            },
            _ => RegistryError::Status {
                at: at.clone(),
                status,
                detail,
                retry_after,
            },
        }
    }

    pub(crate) fn count_bytes(&self, n: u64) {
        ClientStats::add(&self.stats.bytes, n);
    }
}

/// Errors where no server answered at all (nothing listening, unreachable,
/// timeout): trying plain HTTP instead would not help.
fn is_no_answer(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::ConnectionFailed | ureq::Error::HostNotFound | ureq::Error::Timeout(_) => true,
        ureq::Error::Io(io) => matches!(
            io.kind(),
            std::io::ErrorKind::ConnectionRefused
                | std::io::ErrorKind::TimedOut
                | std::io::ErrorKind::HostUnreachable
                | std::io::ErrorKind::NetworkUnreachable
                | std::io::ErrorKind::AddrNotAvailable
        ),
        _ => false,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic elsewhere while holding one of these maps leaves it valid
    // (every update is a single insert).
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn authority(url: &str) -> Option<String> {
    let u: Uri = url.parse().ok()?;
    Some(format!(
        "{}://{}",
        u.scheme_str().unwrap_or(""),
        u.authority()?.as_str().to_ascii_lowercase()
    ))
}

fn redirect_target(current: &str, resp: &Response<Body>) -> Option<String> {
    let loc = resp.headers().get("location")?.to_str().ok()?;
    if loc.starts_with("http://") || loc.starts_with("https://") {
        return Some(loc.to_owned());
    }
    let base: Uri = current.parse().ok()?;
    let origin = format!("{}://{}", base.scheme_str()?, base.authority()?);
    if loc.starts_with('/') {
        Some(format!("{origin}{loc}"))
    } else {
        let path = base.path();
        let dir = &path[..path.rfind('/').map_or(0, |i| i + 1)];
        Some(format!("{origin}{dir}{loc}"))
    }
}

/// Reads at most `limit` bytes of a body; more is an error.
pub(crate) fn read_limited(resp: &mut Response<Body>, limit: u64) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    resp.body_mut()
        .as_reader()
        .take(limit + 1)
        .read_to_end(&mut out)?;
    if out.len() as u64 > limit {
        return Err(std::io::Error::other(format!("larger than {limit} bytes")));
    }
    Ok(out)
}

/// The registry's error answer (`{"errors":[{"code","message"}]}`) in one
/// line, or the start of whatever it sent.
fn error_detail(resp: &mut Response<Body>) -> String {
    let Ok(body) = read_limited(resp, 16 << 10) else {
        return String::new();
    };
    #[derive(serde::Deserialize)]
    struct Errors {
        errors: Vec<ErrorEntry>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorEntry {
        code: Option<String>,
        message: Option<String>,
    }
    if let Ok(e) = serde_json::from_slice::<Errors>(&body) {
        return e
            .errors
            .iter()
            .map(|e| {
                format!(
                    "{} {}",
                    e.code.as_deref().unwrap_or(""),
                    e.message.as_deref().unwrap_or("")
                )
                .trim()
                .to_owned()
            })
            .collect::<Vec<_>>()
            .join("; ");
    }
    let text = String::from_utf8_lossy(&body);
    text.trim().chars().take(200).collect()
}

/// The system's CA certificates plus, if given, the extra CA file's.
fn root_certs(
    extra: Option<&std::path::Path>,
) -> Result<Vec<ureq::tls::Certificate<'static>>, RegistryError> {
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::debug!(error = %blockio::error_chain(&e), "a system CA certificate could not be loaded");
    }
    let mut roots: Vec<_> = native
        .certs
        .iter()
        .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
        .collect();
    if let Some(path) = extra {
        let ca_err = |reason: String| RegistryError::CaFile {
            path: path.to_owned(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_err(e.to_string()))?;
        let before = roots.len();
        for item in ureq::tls::parse_pem(&pem) {
            match item.map_err(|e| ca_err(format!("not PEM: {e}")))? {
                ureq::tls::PemItem::Certificate(c) => roots.push(c),
                _ => continue,
            }
        }
        if roots.len() == before {
            return Err(ca_err("no CERTIFICATE in the file".into()));
        }
    }
    Ok(roots)
}
