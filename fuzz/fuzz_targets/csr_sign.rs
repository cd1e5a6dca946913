//! CSR parsing and the signing request as the control plane handles
//! `POST /v1/svid`: the JSON body (`SvidRequest`, credential included), the
//! requested SPIFFE ID, then the CA's CSR checks and signing. The first
//! byte picks the input: 0 a request body, 1 a DER CSR (wrapped in PEM
//! here), 2 PEM text.
#![no_main]
use std::sync::LazyLock;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use rustls_pki_types::UnixTime;
use ward_api::svid::{Credential, SvidRequest};
use ward_identity::svid::{Role, spiffe_id_of, verify_chain};
use ward_identity::{CertificateAuthority, SpiffeId, TrustBundles};

const TRUST_DOMAIN: &str = "fuzz.example";

static CA: LazyLock<CertificateAuthority> = LazyLock::new(|| {
    CertificateAuthority::generate_root(TRUST_DOMAIN, Duration::from_secs(3650 * 86400))
        .expect("a root")
});
static BUNDLES: LazyLock<TrustBundles> = LazyLock::new(|| {
    TrustBundles::new()
        .with_root(TRUST_DOMAIN, &CA.bundle_pem())
        .expect("the root loads")
});
static ID: LazyLock<SpiffeId> =
    LazyLock::new(|| SpiffeId::parse("spiffe://fuzz.example/ns/default/sa/app").unwrap());

fuzz_target!(|data: &[u8]| {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 3 {
        0 => request(rest),
        1 => check(&pem(rest), &ID),
        _ => {
            if let Ok(text) = std::str::from_utf8(rest) {
                check(text, &ID)
            }
        }
    }
});

fn request(body: &[u8]) {
    let Ok(request) = serde_json::from_slice::<SvidRequest>(body) else {
        return;
    };
    // The credential survives the wire both ways.
    if let Some(credential) = &request.credential {
        let json = serde_json::to_string(credential).unwrap();
        assert_eq!(
            &serde_json::from_str::<Credential>(&json).unwrap(),
            credential
        );
    }
    let Ok(requested) = SpiffeId::parse(&request.spiffe_id) else {
        return;
    };
    check(&request.csr, &requested);
}

fn pem(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE REQUEST-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE REQUEST-----\n");
    out
}

fn check(csr_pem: &str, id: &SpiffeId) {
    let checked = CA.check_csr(csr_pem, id);
    let signed = CA.sign_csr(csr_pem, id, Duration::from_secs(3600));
    // The control plane checks before it attests (a bad CSR must not burn
    // a join token), so the check must refuse exactly what signing refuses.
    assert_eq!(
        checked.is_ok(),
        signed.is_ok(),
        "check_csr {checked:?} but sign_csr {:?}",
        signed.as_ref().err()
    );
    let Ok(svid) = signed else { return };
    // Whatever the CSR asked for, the certificate names the attested ID and
    // verifies as an SVID.
    assert_eq!(&svid.spiffe_id, id);
    assert_eq!(&spiffe_id_of(&svid.chain_der[0]).unwrap(), id);
    let verified = verify_chain(&svid.chain_der, &BUNDLES, Role::Any, UnixTime::now())
        .expect("an issued SVID verifies");
    assert_eq!(&verified.spiffe_id, id);
}
