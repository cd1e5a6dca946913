use super::*;
use crate::testutil::TestCa;

#[test]
fn add_and_look_up() {
    let a = TestCa::root("a.example");
    let b = TestCa::root("b.example");
    let mut bundles = TrustBundles::new();
    assert!(bundles.is_empty());
    bundles.add_pem("a.example", &a.pem).unwrap();
    bundles.add_pem("b.example", &b.pem).unwrap();
    assert_eq!(
        bundles.trust_domains().collect::<Vec<_>>(),
        ["a.example", "b.example"]
    );
    assert_eq!(
        bundles.roots_for("a.example").unwrap(),
        std::slice::from_ref(&a.der)
    );
    assert_eq!(bundles.anchors_for("b.example").unwrap().len(), 1);
    assert_eq!(bundles.pem_for("a.example").unwrap(), a.pem);
    assert!(bundles.roots_for("c.example").is_none());
    assert!(bundles.remove("a.example"));
    assert!(bundles.pem_for("a.example").is_none());
}

#[test]
fn rotation_adds_roots_without_duplicates() {
    let old = TestCa::root("example.org");
    let new = TestCa::root("example.org");
    let mut bundles = TrustBundles::new()
        .with_root("example.org", &old.pem)
        .unwrap();
    bundles.add_pem("example.org", &new.pem).unwrap();
    bundles.add_pem("example.org", &old.pem).unwrap();
    assert_eq!(
        bundles.roots_for("example.org").unwrap(),
        [old.der.clone(), new.der.clone()]
    );
    // set_pem retires the old root.
    bundles.set_pem("example.org", &new.pem).unwrap();
    assert_eq!(
        bundles.roots_for("example.org").unwrap(),
        std::slice::from_ref(&new.der)
    );
}

#[test]
fn refusals() {
    let root = TestCa::root("example.org");
    let mut bundles = TrustBundles::new();
    assert_eq!(
        bundles.add_pem("example.org", "no pem here"),
        Err(BundleError::NoCertificate)
    );
    assert!(matches!(
        bundles.add_pem("Example.org", &root.pem),
        Err(BundleError::InvalidTrustDomain(..))
    ));
    assert!(matches!(
        bundles.add_pem("example.org/path", &root.pem),
        Err(BundleError::InvalidTrustDomain(..))
    ));

    // A leaf is not a root; nothing of a refused PEM is added.
    let (leaf, _) = root.leaf("spiffe://example.org/a", |_| {});
    let leaf_pem = crate::ca::certs_to_pem(&[leaf]);
    assert_eq!(
        bundles.add_pem("example.org", &format!("{}{leaf_pem}", root.pem)),
        Err(BundleError::NotCa { index: 1 })
    );
    assert!(bundles.roots_for("example.org").is_none());

    let no_sign = root.intermediate("example.org", |p| {
        p.key_usages = vec![rcgen::KeyUsagePurpose::CrlSign]
    });
    assert_eq!(
        bundles.add_pem("example.org", &no_sign.pem),
        Err(BundleError::NoKeyCertSign { index: 0 })
    );
}
