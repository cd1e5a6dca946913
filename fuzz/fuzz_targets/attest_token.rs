//! Token parsing in the control plane's attestation: Kubernetes
//! service-account JWTs (`ServiceAccountTokenValidator`) and join-token
//! records (`JoinTokenStore`). The first byte picks the input:
//! 0 a raw JWT; 1 a JWT header and claims (JSON, split at the first
//! newline) signed here with a key the validator trusts, so the claim
//! checks behind the signature are reached; 2 a join-token record as the
//! store keeps it on disk, then consumed.
#![no_main]
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;
use sha2::{Digest, Sha256};
use ward_control_plane::attest::{
    AttestError, JoinTokenStore, K8sTokenConfig, ServiceAccountTokenValidator,
};
use ward_identity::SpiffeId;

const ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
const TRUST_DOMAIN: &str = "cluster.local";
const KID: &str = "fuzz-ec";
/// The fixed "now" of every check (as in the unit tests).
const NOW: u64 = 1_700_000_000;
const JOIN_TOKEN: &str = "fuzz-join-token";

struct Fixture {
    validator: ServiceAccountTokenValidator,
    key: EncodingKey,
    store: JoinTokenStore,
    store_dir: PathBuf,
    bound: SpiffeId,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let key = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
    jwk.common.key_id = Some(KID.into());
    jwk.common.public_key_use = Some(PublicKeyUse::Signature);
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
    let config = K8sTokenConfig {
        issuer: ISSUER.into(),
        audience: "ward".into(),
        jwks: JwkSet { keys: vec![jwk] },
        trust_domain: TRUST_DOMAIN.into(),
    };
    let validator = ServiceAccountTokenValidator::new(config).unwrap();
    let dir = std::env::temp_dir().join(format!("ward-fuzz-join-tokens-{}", std::process::id()));
    let store = JoinTokenStore::open(&dir).unwrap();
    Fixture {
        validator,
        key,
        store,
        store_dir: dir,
        bound: SpiffeId::parse("spiffe://cluster.local/ns/default/sa/app").unwrap(),
    }
});

fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(NOW)
}

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                validate(token);
            }
        }
        1 => {
            let (header, claims) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"ES256","kid":"fuzz-ec"}"#[..], rest),
            };
            let message = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let signature =
                jsonwebtoken::crypto::sign(message.as_bytes(), &FIXTURE.key, Algorithm::ES256)
                    .unwrap();
            validate(&format!("{message}.{signature}"));
        }
        _ => join_token(rest),
    }
});

fn validate(token: &str) {
    let f = &*FIXTURE;
    let result = f.validator.validate(token, now());
    // Deterministic for a given token and clock.
    assert_eq!(
        format!("{result:?}"),
        format!("{:?}", f.validator.validate(token, now()))
    );
    let Ok(identity) = result else { return };
    // The identity is the one the namespace and service account name, in
    // the configured trust domain, and nothing else.
    let expected =
        SpiffeId::for_service_account(TRUST_DOMAIN, &identity.namespace, &identity.service_account)
            .expect("an accepted token names a valid identity");
    assert_eq!(identity.spiffe_id, expected);
    assert_eq!(identity.spiffe_id.namespace(), Some(&*identity.namespace));
    assert_eq!(
        identity.spiffe_id.service_account(),
        Some(&*identity.service_account)
    );
    // The claims the validator accepted say what it checked. Read as the
    // validator reads them (a `Value` would refuse escapes such as a lone
    // surrogate in a claim the validator skips).
    #[derive(serde::Deserialize)]
    struct Registered {
        iss: String,
        exp: u64,
    }
    let payload = token.split('.').nth(1).unwrap();
    let claims: Registered =
        serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims.iss, ISSUER);
    let exp = claims.exp;
    assert!(exp > NOW, "accepted a token expired at {exp}");
    // The same token is refused once it has expired.
    if let Some(at) = UNIX_EPOCH.checked_add(Duration::from_secs(exp)) {
        assert!(matches!(
            f.validator.validate(token, at),
            Err(AttestError::JwtExpired)
        ));
    }
}

fn join_token(record: &[u8]) {
    let f = &*FIXTURE;
    let hash = hex(&Sha256::digest(JOIN_TOKEN.as_bytes()));
    let pending = f.store_dir.join("pending").join(&hash);
    let used = f.store_dir.join("used").join(&hash);
    let _ = std::fs::remove_file(&used);
    std::fs::write(&pending, record).unwrap();
    let result = f.store.consume(JOIN_TOKEN, &f.bound, now());
    if let Ok(id) = &result {
        assert_eq!(id, &f.bound);
        let record: serde_json::Value = serde_json::from_slice(record).expect("a JSON record");
        assert_eq!(record["spiffe_id"], f.bound.as_str());
        assert!(record["expires_at"].as_u64().expect("expires_at") > NOW);
        // One time only.
        assert!(matches!(
            f.store.consume(JOIN_TOKEN, &f.bound, now()),
            Err(AttestError::TokenAlreadyUsed)
        ));
    }
    let _ = std::fs::remove_file(&pending);
    let _ = std::fs::remove_file(&used);
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
