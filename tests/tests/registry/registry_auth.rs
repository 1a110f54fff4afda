//! Registry authentication against real parts: `docker-registry` with
//! htpasswd (bcrypt) basic auth, credentials given or found in the auth
//! files skopeo reads (in its order); `docker-registry` in `auth.token`
//! mode with JWTs from a test token server (renewed when the registry stops
//! taking the one in use); the bearer flow through the proxy's token gate
//! (anonymous tokens, tokens expiring, a registry refusing fresh tokens);
//! redirects to
//! another host (blob storage) without the Authorization header; TLS with a
//! test CA given as an extra CA file.

use base64::Engine as _;
use ocidisk_tests::oci_writer::BuiltImage;
use ocidisk_tests::registry::proxy::{Fault, Proxy};
use ocidisk_tests::registry::{small_image, Registry, RegistryConfig};
use registry::{Client, ClientOptions, Credentials, Digest, ImageRef, RegistryError, RegistryRef};
use std::path::PathBuf;
use std::time::Duration;

fn rref(s: &str) -> RegistryRef {
    match ImageRef::parse(s).expect("test reference parses") {
        ImageRef::Registry(r) => r,
        other => panic!("not a registry reference: {other:?}"),
    }
}

fn opts(creds: Option<&str>) -> ClientOptions {
    ClientOptions {
        credentials: creds.map(|c| Credentials::parse(c).unwrap()),
        // No file of this machine's user may answer instead.
        auth_files: Some(Vec::new()),
        backoff_initial: Duration::from_millis(20),
        ..ClientOptions::default()
    }
}

fn pushed(reg: &Registry, seed: u64, repo_tag: &str) -> BuiltImage {
    let dir = reg.dir.path().join(format!("src-{seed}"));
    let img = small_image(&dir, 2 << 20, seed, "v1").unwrap();
    reg.push(&img.dir, None, repo_tag).unwrap();
    img
}

fn basic_registry() -> Registry {
    Registry::start(&RegistryConfig {
        basic_auth: Some(("alice".into(), "s3cret".into())),
        ..RegistryConfig::default()
    })
    .unwrap()
}

fn read_first_kib(client: &Client, r: &RegistryRef, img: &BuiltImage) -> Result<(), RegistryError> {
    let system = img.layer("system");
    let mut buf = vec![0u8; 1024];
    client.read_range(r, &Digest::parse(&system.blob.digest).unwrap(), 0, &mut buf)?;
    assert!(buf == system.data[..1024]);
    Ok(())
}

#[test]
fn basic_auth_with_given_credentials() {
    let reg = basic_registry();
    let img = pushed(&reg, 1, "team/os:v1");
    let r = rref(&format!("docker://{}/team/os:v1", reg.addr));

    let e = Client::new(opts(None))
        .unwrap()
        .resolve(&r, None)
        .unwrap_err();
    assert!(
        matches!(e, RegistryError::Unauthorized { status: 401, .. }),
        "{e}"
    );
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains("no credentials were given"),
        "{e}"
    );

    let e = Client::new(opts(Some("alice:wrong")))
        .unwrap()
        .resolve(&r, None)
        .unwrap_err();
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains("credentials or token refused"),
        "{e}"
    );
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("{}/team/os: manifest v1", reg.addr)),
        "{e}"
    );

    let client = Client::new(opts(Some("alice:s3cret"))).unwrap();
    client.resolve(&r, None).unwrap();
    read_first_kib(&client, &r, &img).unwrap();
    assert_eq!(client.stats().snapshot().failures, 0);
}

fn auth_json(registry_key: &str, creds: &str) -> String {
    format!(
        r#"{{"auths": {{"{registry_key}": {{"auth": "{}"}}}}}}"#,
        base64::engine::general_purpose::STANDARD.encode(creds)
    )
}

#[test]
fn basic_auth_from_the_auth_files_skopeo_reads_in_its_order() {
    let reg = basic_registry();
    let img = pushed(&reg, 2, "team/os:v1");
    let r = rref(&format!("docker://{}/team/os:v1", reg.addr));
    let home = tempfile::tempdir().unwrap();
    let run = tempfile::tempdir().unwrap();
    let explicit = home.path().join("explicit-auth.json");
    let xdg: PathBuf = run.path().join("containers/auth.json");
    let config: PathBuf = home.path().join(".config/containers/auth.json");
    let docker: PathBuf = home.path().join(".docker/config.json");
    for f in [&xdg, &config, &docker] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    }
    // Each test runs in its own process under nextest: this environment
    // is this test's alone.
    std::env::set_var("HOME", home.path());
    std::env::set_var("XDG_RUNTIME_DIR", run.path());
    std::env::set_var("REGISTRY_AUTH_FILE", &explicit);
    let client = || {
        Client::new(ClientOptions {
            auth_files: None,
            ..opts(None)
        })
        .unwrap()
    };

    // Only Docker's file knows the registry (its legacy URL form of key).
    std::fs::write(
        &docker,
        auth_json(&format!("https://{}/v1/", reg.addr), "alice:s3cret"),
    )
    .unwrap();
    std::fs::write(&config, auth_json("elsewhere.example", "x:y")).unwrap();
    read_first_kib(&client(), &r, &img).unwrap();

    // An earlier file (containers' per-user file) wins, here with a wrong
    // password, for the repository's namespace only.
    std::fs::write(
        &config,
        auth_json(&format!("{}/team", reg.addr), "alice:wrong"),
    )
    .unwrap();
    let e = read_first_kib(&client(), &r, &img).unwrap_err();
    assert!(
        blockio::error_chain(&e).to_string().contains("refused"),
        "{e}"
    );

    // $XDG_RUNTIME_DIR's file comes before it…
    std::fs::write(&xdg, auth_json(&reg.addr, "alice:s3cret")).unwrap();
    read_first_kib(&client(), &r, &img).unwrap();

    // …and $REGISTRY_AUTH_FILE before everything.
    std::fs::write(&explicit, auth_json(&reg.addr, "mallory:nope")).unwrap();
    assert!(read_first_kib(&client(), &r, &img).is_err());

    // A malformed auth file is an error naming it, not silence.
    std::fs::write(&explicit, "{").unwrap();
    let e = read_first_kib(&client(), &r, &img).unwrap_err();
    assert!(matches!(e, RegistryError::Credentials(_)), "{e}");
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains("explicit-auth.json"),
        "{e}"
    );
}

#[test]
fn bearer_tokens_are_fetched_with_credentials_and_renewed_when_they_expire() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 3, "team/os:v1");
    let gate = Proxy::start_bearer(&reg.addr, Some("bob:hunter2")).unwrap();
    let r = rref(&format!("docker://{}/team/os:v1", gate.addr));

    let e = Client::new(opts(None))
        .unwrap()
        .resolve(&r, None)
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    let msg = blockio::error_chain(&e).to_string();
    assert!(
        msg.contains(&format!("token from http://{}/token", gate.addr)),
        "{msg}"
    );
    assert!(msg.contains("anonymous access"), "{msg}");

    let client = Client::new(opts(Some("bob:hunter2"))).unwrap();
    client.resolve(&r, None).unwrap();
    read_first_kib(&client, &r, &img).unwrap();
    assert_eq!(gate.tokens_issued(), 1, "one token serves every request");
    let token_req = gate
        .seen()
        .into_iter()
        .find(|s| s.target.starts_with("/token"))
        .unwrap();
    assert!(
        token_req
            .target
            .contains("scope=repository%3Ateam%2Fos%3Apull"),
        "{}",
        token_req.target
    );
    assert!(
        token_req.target.contains("service=ocidisk-test"),
        "{}",
        token_req.target
    );

    // The token expires while in use: the next request gets a 401, a new
    // token is fetched and the request repeated, invisibly to the caller.
    gate.expire_tokens();
    read_first_kib(&client, &r, &img).unwrap();
    assert_eq!(gate.tokens_issued(), 2);
    let s = client.stats().snapshot();
    assert_eq!(s.failures, 0);
    assert_eq!(s.token_fetches, 2);

    // A registry that keeps refusing fresh tokens is an error, not a loop.
    gate.add("/blobs/", Fault::Unauthorized, None);
    let e = read_first_kib(&client, &r, &img).unwrap_err();
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains("credentials or token refused"),
        "{e}"
    );
    assert_eq!(gate.tokens_issued(), 3);
}

#[test]
fn anonymous_bearer_tokens() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 4, "pub/os:v1");
    let gate = Proxy::start_bearer(&reg.addr, None).unwrap();
    let r = rref(&format!("docker://{}/pub/os:v1", gate.addr));
    let client = Client::new(opts(None)).unwrap();
    read_first_kib(&client, &r, &img).unwrap();
    assert!(gate
        .seen()
        .iter()
        .any(|s| s.target.starts_with("/token") && s.authorization.is_none()));
}

#[test]
fn redirect_to_another_host_drops_authorization() {
    let reg = Registry::start_plain().unwrap();
    let img = pushed(&reg, 5, "team/os:v1");
    let gate = Proxy::start_bearer(&reg.addr, Some("bob:hunter2")).unwrap();
    // "Blob storage": another authority (localhost, not 127.0.0.1, and
    // another port) serving the same blobs.
    let store = Proxy::start(&reg.addr).unwrap();
    let store_port = store.addr.rsplit_once(':').unwrap().1;
    gate.add(
        "/blobs/",
        Fault::Redirect(format!("http://localhost:{store_port}")),
        None,
    );
    let r = rref(&format!("docker://{}/team/os:v1", gate.addr));
    let client = Client::new(opts(Some("bob:hunter2"))).unwrap();
    client.resolve(&r, None).unwrap();
    read_first_kib(&client, &r, &img).unwrap();

    let at_gate = gate.seen();
    assert!(at_gate.iter().any(|s| s.target.contains("/blobs/")
        && s.authorization
            .as_deref()
            .is_some_and(|a| a.starts_with("Bearer "))));
    let at_store = store.seen();
    assert!(
        at_store.iter().any(|s| s.target.contains("/blobs/")),
        "{at_store:?}"
    );
    for s in &at_store {
        assert_eq!(
            s.authorization, None,
            "Authorization leaked to the blob store: {s:?}"
        );
    }
    assert!(at_store
        .iter()
        .any(|s| s.range.as_deref() == Some("bytes=0-1023")));
}

#[test]
fn tls_with_a_test_ca_given_as_an_extra_ca_file() {
    let reg = Registry::start(&RegistryConfig {
        tls: true,
        ..RegistryConfig::default()
    })
    .unwrap();
    let img = pushed(&reg, 6, "team/os:v1");
    let ca = reg.ca.as_ref().unwrap();
    let r = rref(&format!("docker://{}/team/os:v1", reg.addr));

    // Without the CA: the certificate is not trusted, and a loopback
    // registry's HTTP fallback does not hide that.
    let e = Client::new(opts(None))
        .unwrap()
        .resolve(&r, None)
        .unwrap_err();
    let msg = blockio::error_chain(&e).to_string();
    assert!(msg.contains(&format!("https://{}/v2/", reg.addr)), "{msg}");
    assert!(
        msg.to_lowercase().contains("certificate") || msg.contains("UnknownIssuer"),
        "{msg}"
    );

    let client = Client::new(ClientOptions {
        extra_ca: Some(ca.ca_cert.clone()),
        ..opts(None)
    })
    .unwrap();
    client.resolve(&r, None).unwrap();
    read_first_kib(&client, &r, &img).unwrap();

    // A CA file that is not one is named when the client is made.
    let bad = reg.dir.path().join("not-a-ca.pem");
    std::fs::write(&bad, "hello").unwrap();
    let e = Client::new(ClientOptions {
        extra_ca: Some(bad),
        ..opts(None)
    })
    .unwrap_err();
    assert!(matches!(e, RegistryError::CaFile { .. }), "{e}");
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains("not-a-ca.pem"),
        "{e}"
    );
}

#[test]
fn registry_token_auth_with_jwts_from_a_token_server() {
    use ocidisk_tests::registry::token::TokenServer;
    use ocidisk_tests::registry::TokenAuth;
    let work = tempfile::tempdir().unwrap();
    let tokens = TokenServer::start(&work.path().join("tokens"), Some("carol:pw")).unwrap();
    let mut reg = Registry::start(&RegistryConfig {
        token: Some(TokenAuth {
            realm: tokens.realm(),
            bundle: tokens.bundle(),
            push_creds: Some(("carol".into(), "pw".into())),
        }),
        ..RegistryConfig::default()
    })
    .unwrap();
    // skopeo itself goes through the token flow to push.
    let img = pushed(&reg, 7, "team/os:v1");
    let pushed_with = tokens.issued();
    assert!(pushed_with >= 1);
    let r = rref(&format!("docker://{}/team/os:v1", reg.addr));

    let e = Client::new(opts(None))
        .unwrap()
        .resolve(&r, None)
        .unwrap_err();
    assert!(matches!(e, RegistryError::Unauthorized { .. }), "{e}");
    assert!(
        blockio::error_chain(&e)
            .to_string()
            .contains(&format!("token from {}", tokens.realm())),
        "{e}"
    );

    let client = Client::new(opts(Some("carol:pw"))).unwrap();
    client.resolve(&r, None).unwrap();
    read_first_kib(&client, &r, &img).unwrap();
    assert_eq!(
        tokens.issued(),
        pushed_with + 1,
        "one token serves every request"
    );

    // The signing key changes and the registry restarts: the token in use
    // is refused from now on, and the client fetches a new one.
    tokens.rotate().unwrap();
    reg.restart().unwrap();
    read_first_kib(&client, &r, &img).unwrap();
    assert_eq!(tokens.issued(), pushed_with + 2);
    assert_eq!(client.stats().snapshot().failures, 0);
}
