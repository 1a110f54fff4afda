//! Debian's `docker-registry` (the reference distribution registry) run by
//! the tests: on 127.0.0.1 at a free port with its own temp storage, plain,
//! with htpasswd basic auth, or with TLS from a CA the test makes with the
//! openssl CLI. Images are pushed with `skopeo copy`, as a user would.
//!
//! The package's own service (port 5000, /var/lib/docker-registry) is not
//! used; `.ci/install-deps` stops and disables it where systemd runs.

use anyhow::{bail, ensure, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod proxy;
pub mod token;

/// How a registry is set up.
#[derive(Debug, Clone, Default)]
pub struct RegistryConfig {
    /// Require this `user:password` (htpasswd with bcrypt).
    pub basic_auth: Option<(String, String)>,
    /// Serve HTTPS with a certificate from a fresh test CA.
    pub tls: bool,
    /// Require tokens from this token server (`auth.token`).
    pub token: Option<TokenAuth>,
}

/// The registry's `auth.token` settings.
#[derive(Debug, Clone)]
pub struct TokenAuth {
    /// The token endpoint URL.
    pub realm: String,
    /// The certificate bundle whose keys sign tokens.
    pub bundle: PathBuf,
    /// Credentials the token server takes, for pushing with skopeo.
    pub push_creds: Option<(String, String)>,
}

/// A test CA and a server certificate for 127.0.0.1 and localhost.
#[derive(Debug)]
pub struct TestCa {
    /// The CA certificate (PEM): what a client must trust.
    pub ca_cert: PathBuf,
    /// The server's certificate (PEM), signed by the CA.
    pub server_cert: PathBuf,
    /// The server's key (PEM).
    pub server_key: PathBuf,
}

impl TestCa {
    /// Makes a CA and a server certificate in `dir` with the openssl CLI.
    pub fn create(dir: &Path) -> Result<TestCa> {
        std::fs::create_dir_all(dir)?;
        let p = |n: &str| dir.join(n);
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=ocidisk test CA",
            "-keyout",
            path_str(&p("ca.key"))?,
            "-out",
            path_str(&p("ca.crt"))?,
        ])?;
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            path_str(&p("server.key"))?,
            "-out",
            path_str(&p("server.csr"))?,
        ])?;
        std::fs::write(
            p("san.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )?;
        openssl(&[
            "x509",
            "-req",
            "-days",
            "2",
            "-CAcreateserial",
            "-in",
            path_str(&p("server.csr"))?,
            "-CA",
            path_str(&p("ca.crt"))?,
            "-CAkey",
            path_str(&p("ca.key"))?,
            "-extfile",
            path_str(&p("san.ext"))?,
            "-out",
            path_str(&p("server.crt"))?,
        ])?;
        Ok(TestCa {
            ca_cert: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
        })
    }
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str().context("non-UTF-8 temp path")
}

fn openssl(args: &[&str]) -> Result<()> {
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (package openssl)")?;
    ensure!(
        out.status.success(),
        "openssl {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// A free TCP port on 127.0.0.1 (bound and released: another process could
/// take it in between, which the callers' readiness checks would show).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn spawn_registry(dir: &Path) -> Result<Child> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("registry.log"))?;
    Command::new("docker-registry")
        .arg("serve")
        .arg(dir.join("config.yml"))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .context("starting docker-registry (package docker-registry)")
}

/// A running `docker-registry serve`; stopped (killed) on drop.
#[derive(Debug)]
pub struct Registry {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    /// The temp directory holding config, storage and log.
    pub dir: tempfile::TempDir,
    /// The CA clients must trust when TLS is on.
    pub ca: Option<TestCa>,
    /// The credentials when basic auth is on.
    pub creds: Option<(String, String)>,
}

impl Registry {
    /// A registry without auth, over plain HTTP.
    pub fn start_plain() -> Result<Registry> {
        Registry::start(&RegistryConfig::default())
    }

    /// Starts a registry as configured and waits until `/v2/` answers.
    pub fn start(cfg: &RegistryConfig) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port()?;
        let addr = format!("127.0.0.1:{port}");
        let storage = dir.path().join("storage");
        std::fs::create_dir_all(&storage)?;
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
            storage.display()
        );
        let ca = if cfg.tls {
            let ca = TestCa::create(&dir.path().join("tls"))?;
            yaml += &format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                ca.server_cert.display(),
                ca.server_key.display()
            );
            Some(ca)
        } else {
            None
        };
        if let Some((user, pass)) = &cfg.basic_auth {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, pass])
                .output()
                .context("running htpasswd (package apache2-utils)")?;
            ensure!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, &out.stdout)?;
            yaml += &format!(
                "auth:\n  htpasswd:\n    realm: ocidisk-test\n    path: {}\n",
                file.display()
            );
        }
        if let Some(t) = &cfg.token {
            yaml += &format!(
                "auth:\n  token:\n    realm: {}\n    service: {}\n    issuer: {}\n    rootcertbundle: {}\n",
                t.realm,
                token::SERVICE,
                token::ISSUER,
                t.bundle.display()
            );
        }
        let config = dir.path().join("config.yml");
        std::fs::write(&config, yaml)?;
        let child = spawn_registry(dir.path())?;
        let mut reg = Registry {
            child,
            addr,
            dir,
            ca,
            creds: cfg
                .basic_auth
                .clone()
                .or_else(|| cfg.token.as_ref().and_then(|t| t.push_creds.clone())),
        };
        reg.wait_ready()?;
        Ok(reg)
    }

    /// Stops the registry and starts it again on the same port with the
    /// same storage (it rereads its config and certificate bundles).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        self.start_again()
    }

    /// Kills the registry: connections to its port are refused until
    /// [`Registry::start_again`].
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a stopped registry again on the same port with the same
    /// storage.
    pub fn start_again(&mut self) -> Result<()> {
        // The port is free again once the old process is gone; the new one
        // may still race another process for it, which wait_ready reports.
        self.child = spawn_registry(self.dir.path())?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(st) = self.child.try_wait()? {
                bail!("docker-registry exited ({st}): {}", self.log());
            }
            if TcpStream::connect(&self.addr).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "docker-registry did not listen on {}: {}",
                    self.addr,
                    self.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// `http(s)://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://{}", self.addr)
    }

    /// Pushes `oci:LAYOUT[:REF]` to `REPO:TAG` here with skopeo.
    pub fn push(&self, layout: &Path, reference: Option<&str>, repo_tag: &str) -> Result<()> {
        self.push_with(layout, reference, repo_tag, &[])
    }

    /// [`Registry::push`] with more skopeo arguments (e.g. `--format v2s2`
    /// for Docker's manifest format).
    pub fn push_with(
        &self,
        layout: &Path,
        reference: Option<&str>,
        repo_tag: &str,
        extra: &[&str],
    ) -> Result<()> {
        let mut src = format!("oci:{}", path_str(layout)?);
        if let Some(r) = reference {
            src += ":";
            src += r;
        }
        let dest = format!("docker://{}/{repo_tag}", self.addr);
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet"]);
        // skopeo reads certificates from a directory of *.crt files.
        let certs;
        match &self.ca {
            Some(ca) => {
                certs = tempfile::tempdir()?;
                std::fs::copy(&ca.ca_cert, certs.path().join("ca.crt"))?;
                cmd.arg(format!("--dest-cert-dir={}", path_str(certs.path())?));
            }
            None => {
                cmd.arg("--dest-tls-verify=false");
            }
        }
        if let Some((u, p)) = &self.creds {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        let out = cmd
            .args(extra)
            .arg(&src)
            .arg(&dest)
            .output()
            .context("running skopeo (package skopeo)")?;
        ensure!(
            out.status.success(),
            "skopeo copy {src} {dest}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    }

    /// Uploads a manifest or index as `REPO:TAG` (skopeo cannot push an
    /// index this way from an OCI layout), over plain HTTP without auth.
    pub fn put_manifest(&self, repo: &str, tag: &str, media_type: &str, body: &[u8]) -> Result<()> {
        ensure!(
            self.ca.is_none() && self.creds.is_none(),
            "put_manifest speaks plain HTTP without auth"
        );
        let mut s = TcpStream::connect(&self.addr)?;
        write!(
            s,
            "PUT /v2/{repo}/manifests/{tag} HTTP/1.0\r\nHost: {}\r\nContent-Type: {media_type}\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        )?;
        s.write_all(body)?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        ensure!(
            answer.starts_with("HTTP/1.0 201") || answer.starts_with("HTTP/1.1 201"),
            "PUT manifest {repo}:{tag}: {answer}"
        );
        Ok(())
    }

    /// The file where the registry stores a blob (to damage it in a test).
    pub fn blob_path(&self, digest: &str) -> Result<PathBuf> {
        let hex = digest
            .strip_prefix("sha256:")
            .context("not a sha256 digest")?;
        Ok(self.dir.path().join(format!(
            "storage/docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        )))
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A small Monogon-format image for registry tests, written to `dir`: a
/// 64 KiB + 123 byte `kernel.efi` and a `system` payload of `system_len`
/// pseudo-random bytes (seeded, so every run pushes the same blobs), under
/// ref name `ref_name`.
pub fn small_image(
    dir: &Path,
    system_len: usize,
    seed: u64,
    ref_name: &str,
) -> Result<crate::oci_writer::BuiltImage> {
    use crate::oci_writer::{efi_image, ImageBuilder, OsImage, Payload};
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let system: Vec<u8> = (0..system_len)
        .map(|_| {
            // xorshift64: cheap, deterministic filler.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    ImageBuilder::monogon(
        OsImage::new()
            .payload(Payload::new("kernel.efi", efi_image(64 * 1024 + 123)))
            .payload(Payload::new("system", system))
            .ref_name(ref_name),
    )
    .write(dir)
}
