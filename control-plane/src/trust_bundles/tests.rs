use super::*;
use std::time::Duration;
use ward_identity::CertificateAuthority;

const TD: &str = "cluster.local";

fn root(td: &str) -> String {
    CertificateAuthority::generate_root(td, Duration::from_secs(3600))
        .unwrap()
        .cert_pem()
}

fn body(set: &BundleSet, td: &str) -> BundleBody {
    let resource = set
        .resources
        .iter()
        .find(|r| r.name == td)
        .unwrap_or_else(|| panic!("no bundle for {td}"));
    serde_json::from_value(resource.body.clone()).unwrap()
}

#[test]
fn the_cas_root_alone_without_a_directory() {
    let ca = root(TD);
    let set = load(TD, &ca, None).unwrap();
    assert_eq!(set.resources.len(), 1);
    assert_eq!(body(&set, TD).roots_pem, ca);
    assert_eq!(set.own_pem, ca);
}

#[test]
fn directory_roots_join_their_trust_domains_bundle() {
    let ca = root(TD);
    let next = root(TD);
    let partner = root("partner.example");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{TD}.pem")), &next).unwrap();
    std::fs::write(dir.path().join("partner.example.pem"), &partner).unwrap();
    // A mounted ConfigMap's own files are not bundles.
    std::fs::write(dir.path().join("..data"), "not a bundle").unwrap();
    std::fs::write(dir.path().join("README"), "not a bundle").unwrap();
    let set = load(TD, &ca, Some(dir.path())).unwrap();
    assert_eq!(
        set.resources.iter().map(|r| &*r.name).collect::<Vec<_>>(),
        [TD, "partner.example"]
    );
    assert_eq!(body(&set, TD).roots_pem, format!("{ca}{next}"));
    assert_eq!(set.own_pem, format!("{ca}{next}"));
    assert_eq!(body(&set, "partner.example").roots_pem, partner);
    // The CA's root listed again in the directory is not duplicated.
    std::fs::write(dir.path().join(format!("{TD}.pem")), &ca).unwrap();
    assert_eq!(load(TD, &ca, Some(dir.path())).unwrap().own_pem, ca);
}

#[test]
fn a_bad_file_refuses_the_whole_set_and_says_which() {
    let ca = root(TD);
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("partner.example.pem"),
        root("partner.example"),
    )
    .unwrap();
    let bad = dir.path().join("other.example.pem");
    std::fs::write(&bad, "-----BEGIN CERTIFICATE-----\nnot base64\n").unwrap();
    let err = load(TD, &ca, Some(dir.path())).unwrap_err();
    assert!(
        matches!(&err, BundleDirError::Bundle { path, .. } if *path == bad),
        "{err}"
    );

    std::fs::remove_file(&bad).unwrap();
    let named = dir.path().join("not a domain!.pem");
    std::fs::write(&named, root("partner.example")).unwrap();
    let err = load(TD, &ca, Some(dir.path())).unwrap_err();
    assert!(
        matches!(&err, BundleDirError::Bundle { path, source: ward_identity::BundleError::InvalidTrustDomain(..) } if *path == named),
        "{err}"
    );
}

#[test]
fn a_leaf_certificate_is_not_a_root() {
    let ca = CertificateAuthority::generate_root(TD, Duration::from_secs(3600)).unwrap();
    let key = ward_identity::generate_key();
    let id = ward_identity::SpiffeId::parse("spiffe://cluster.local/ns/a/sa/b").unwrap();
    let csr = ward_identity::build_csr(&key, &id).unwrap();
    let leaf = ca.sign_csr(&csr, &id, Duration::from_secs(60)).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{TD}.pem")), &leaf.chain_pem).unwrap();
    let err = load(TD, &ca.cert_pem(), Some(dir.path())).unwrap_err();
    assert!(
        matches!(
            err,
            BundleDirError::Bundle {
                source: ward_identity::BundleError::NotCa { .. },
                ..
            }
        ),
        "{err}"
    );
}

/// A rotation's fields ride on the CA's trust domain's bundle only; a
/// distrusted root leaves it even when the directory lists it; without
/// them the body (and its version) is what it always was.
#[test]
fn a_rotations_fields_go_to_the_cas_own_bundle() {
    let old = root(TD);
    let new = root(TD);
    let partner = root("partner.example");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(format!("{TD}.pem")), &old).unwrap();
    std::fs::write(dir.path().join("partner.example.pem"), &partner).unwrap();
    let dir_roots = read_dir(dir.path()).unwrap();

    let plain = compose(TD, &OwnRoots::plain(&old), &dir_roots).unwrap();
    assert_eq!(plain, load(TD, &old, Some(dir.path())).unwrap());
    let json = serde_json::to_string(&plain.resources[0].body).unwrap();
    assert!(
        !json.contains("distrusted_pem") && !json.contains("renew"),
        "{json}"
    );

    let own = OwnRoots {
        roots_pem: new.clone(),
        distrusted_pem: old.clone(),
        renew: Some(RenewRequest {
            signer_pem: new.clone(),
            within_seconds: 30,
        }),
    };
    let set = compose(TD, &own, &dir_roots).unwrap();
    let ours = body(&set, TD);
    assert_eq!(
        ours.roots_pem, new,
        "the directory's copy of the old root left too"
    );
    assert_eq!(ours.distrusted_pem, old);
    assert_eq!(ours.renew.unwrap().within_seconds, 30);
    assert_eq!(set.own_pem, new);
    assert_eq!(set.own, own);
    let theirs = body(&set, "partner.example");
    assert!(theirs.distrusted_pem.is_empty() && theirs.renew.is_none());
}
