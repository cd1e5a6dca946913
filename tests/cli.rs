//! The operator CLI as a user runs it: real processes, exit codes, output.

#[path = "support/bins.rs"]
mod bins;

use std::path::Path;
use std::time::Duration;

use bins::{stderr, stdout, ward, ward_with_stdin};
use ward_identity::SpiffeId;
use ward_identity::ca::{self, CertificateAuthority};

#[test]
fn identity_parse_prints_trust_domain_and_path() {
    let out = ward(&["identity", "parse", "spiffe://cluster.local/ns/prod/sa/api"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"trust_domain": "cluster.local", "path": "/ns/prod/sa/api"})
    );

    let out = ward(&["identity", "parse", "spiffe://example.org"]);
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["path"], "");
}

#[test]
fn identity_parse_invalid_ids_exit_1_naming_the_rule() {
    let cases = [
        ("", "empty"),
        ("spiffe://example.org/", "trailing slash"),
        ("spiffe://Example.org/x", "trust domain characters"),
        ("spiffe://example.org:80/x", "port"),
        ("spiffe://example.org/a/../b", "dot segments"),
        ("https://example.org/x", "scheme"),
    ];
    for (id, rule) in cases {
        let out = ward(&["identity", "parse", id]);
        assert_eq!(out.status.code(), Some(1), "{id:?}");
        assert!(stderr(&out).contains(rule), "{id:?}: {}", stderr(&out));
        assert!(stdout(&out).is_empty());
    }
}

#[test]
fn identity_parse_reads_stdin_exactly_as_given() {
    let out = ward_with_stdin(&["identity", "parse", "-"], b"spiffe://example.org/x");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // A trailing newline is part of the ID, and not a valid path character.
    let out = ward_with_stdin(&["identity", "parse", "-"], b"spiffe://example.org/x\n");
    assert_eq!(out.status.code(), Some(1));
    let out = ward_with_stdin(&["identity", "parse", "-"], b"");
    assert_eq!(out.status.code(), Some(1));
    let out = ward_with_stdin(&["identity", "parse", "-"], b"spiffe://example.org/\xff");
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn usage_errors_exit_2() {
    assert_eq!(ward(&["identity", "parse"]).status.code(), Some(2));
    assert_eq!(ward(&["identity", "frobnicate"]).status.code(), Some(2));
    assert_eq!(
        ward(&["identity", "verify", "--bundle", "noequals", "x.pem"])
            .status
            .code(),
        Some(2)
    );
}

/// A workload certificate issued by `ca`, written as chain + key files.
fn issue(ca: &CertificateAuthority, id: &str, dir: &Path, name: &str) -> (String, String) {
    let id = SpiffeId::parse(id).unwrap();
    let key = ca::generate_key();
    let csr = ca::build_csr(&key, &id).unwrap();
    let svid = ca.sign_csr(&csr, &id, Duration::from_secs(3600)).unwrap();
    let chain = dir.join(format!("{name}.pem"));
    let key_path = dir.join(format!("{name}-key.pem"));
    std::fs::write(&chain, &svid.chain_pem).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (chain.display().to_string(), key_path.display().to_string())
}

#[test]
fn identity_verify_checks_chain_by_trust_domain_role_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a =
        CertificateAuthority::generate_root("a.example", Duration::from_secs(86400)).unwrap();
    let ca_b =
        CertificateAuthority::generate_root("b.example", Duration::from_secs(86400)).unwrap();
    let bundle_a = dir.path().join("a.pem");
    let bundle_b = dir.path().join("b.pem");
    std::fs::write(&bundle_a, ca_a.bundle_pem()).unwrap();
    std::fs::write(&bundle_b, ca_b.bundle_pem()).unwrap();
    let bundle_args = [
        "--bundle".to_string(),
        format!("a.example={}", bundle_a.display()),
        "--bundle".to_string(),
        format!("b.example={}", bundle_b.display()),
    ];
    let verify = |extra: &[&str]| {
        let mut args: Vec<&str> = vec!["identity", "verify"];
        args.extend(bundle_args.iter().map(String::as_str));
        args.extend(extra);
        ward(&args)
    };

    let (chain, key) = issue(
        &ca_a,
        "spiffe://a.example/ns/default/sa/web",
        dir.path(),
        "web",
    );
    let out = verify(&[&chain]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(json["spiffe_id"], "spiffe://a.example/ns/default/sa/web");
    let not_after = json["not_after"].as_str().unwrap();
    assert!(
        not_after.len() == 20 && not_after.ends_with('Z'),
        "{not_after}"
    );
    assert_eq!(verify(&["--role", "server", &chain]).status.code(), Some(0));
    assert_eq!(
        verify(&["--role", "client", "--key", &key, &chain])
            .status
            .code(),
        Some(0)
    );

    // Someone else's key does not match the leaf.
    let (_, other_key) = issue(
        &ca_a,
        "spiffe://a.example/ns/default/sa/db",
        dir.path(),
        "db",
    );
    let out = verify(&["--key", &other_key, &chain]);
    assert_eq!(out.status.code(), Some(1));
    assert!(!stderr(&out).is_empty());

    // CA A will not sign a B identity, so build one with rcgen: a leaf for
    // b.example signed by A's root. Both bundles are loaded; it must fail.
    let cross = cross_signed_leaf(&ca_a, "spiffe://b.example/ns/default/sa/web");
    let cross_path = dir.path().join("cross.pem");
    std::fs::write(&cross_path, cross).unwrap();
    let out = verify(&[cross_path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));

    // Only A's bundle given: B's ID has no bundle at all.
    let (chain_b, _) = issue(
        &ca_b,
        "spiffe://b.example/ns/default/sa/web",
        dir.path(),
        "webb",
    );
    let out = ward(&[
        "identity",
        "verify",
        "--bundle",
        &format!("a.example={}", bundle_a.display()),
        &chain_b,
    ]);
    assert_eq!(out.status.code(), Some(1));
}

/// A leaf carrying `id` signed directly with the CA's key, bypassing the
/// CA's own trust-domain check (what an attacker holding A's key could do).
fn cross_signed_leaf(ca: &CertificateAuthority, id: &str) -> String {
    let ca_key = rcgen::KeyPair::from_pem(&ca.key_pem()).unwrap();
    let issuer = rcgen::Issuer::from_ca_cert_pem(&ca.cert_pem(), ca_key).unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(id.try_into().unwrap())];
    params.is_ca = rcgen::IsCa::ExplicitNoCa;
    params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = ca::generate_key();
    params.signed_by(&leaf_key, &issuer).unwrap().pem()
}

#[test]
fn ca_init_inspect_and_token_create() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let data = data.to_str().unwrap();
    let ca_init = || {
        ward(&[
            "ca",
            "init",
            "--data-dir",
            data,
            "--trust-domain",
            "mesh.example",
        ])
    };
    let token_create = |spiffe_id: &str, ttl: &[&str]| {
        let args = [
            "token",
            "create",
            "--data-dir",
            data,
            "--spiffe-id",
            spiffe_id,
        ];
        ward(&[&args[..], ttl].concat())
    };
    let out = ca_init();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let init: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(init["trust_domain"], "mesh.example");

    let out = ward(&["ca", "inspect", "--data-dir", data]);
    let inspect: serde_json::Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(inspect["fingerprint_sha256"], init["fingerprint_sha256"]);
    assert_eq!(
        inspect["fingerprint_sha256"].as_str().unwrap().len(),
        32 * 3 - 1
    );

    // A second init must not overwrite the CA.
    let out = ca_init();
    assert_ne!(out.status.code(), Some(0));

    let out = token_create("spiffe://mesh.example/ns/a/sa/b", &["--ttl", "10m"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let token = stdout(&out).trim().to_owned();
    assert!(token.len() >= 40, "{token}");
    // The raw token is stored nowhere in the data directory.
    for entry in walk(Path::new(data)) {
        let contents = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&contents).contains(&token),
            "{}",
            entry.display()
        );
    }
    let out = token_create("spiffe://mesh.example/ns/a/sa/", &[]);
    assert_ne!(out.status.code(), Some(0));
    let out = token_create("spiffe://other.example/ns/a/sa/b", &[]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("trust domain"), "{}", stderr(&out));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}
