use super::*;
use crate::testutil::TestCa;

const TD: &str = "example.org";

fn roots(trust: &Trust) -> Vec<rustls_pki_types::CertificateDer<'static>> {
    trust
        .shared()
        .load()
        .roots_for(TD)
        .map(<[_]>::to_vec)
        .unwrap_or_default()
}

#[test]
fn the_union_of_every_source_is_trusted() {
    let boot = TestCa::root(TD);
    let pushed = TestCa::root(TD);
    let issued = TestCa::root(TD);
    let trust = Trust::new(TrustBundles::new().with_root(TD, &boot.pem).unwrap());
    assert_eq!(roots(&trust), std::slice::from_ref(&boot.der));

    trust
        .replace_domain(Source::Pushed, TD, &pushed.pem)
        .unwrap();
    trust
        .replace_domain(Source::Issued, TD, &issued.pem)
        .unwrap();
    assert_eq!(
        roots(&trust),
        [boot.der.clone(), pushed.der.clone(), issued.der.clone()]
    );
    // The same root from two sources is listed once.
    trust.replace_domain(Source::Issued, TD, &boot.pem).unwrap();
    assert_eq!(roots(&trust), [boot.der.clone(), pushed.der.clone()]);
}

/// A renewal during a rotation returns only the new root: the old one stays
/// trusted while the pushed bundle still holds it, and leaves only when
/// every source has dropped it.
#[test]
fn a_renewal_never_narrows_trust_on_its_own() {
    let old = TestCa::root(TD);
    let new = TestCa::root(TD);
    let trust = Trust::new(TrustBundles::new().with_root(TD, &old.pem).unwrap());
    let both = format!("{}{}", old.pem, new.pem);
    trust.replace_domain(Source::Pushed, TD, &both).unwrap();
    trust.replace_domain(Source::Issued, TD, &new.pem).unwrap();
    assert_eq!(roots(&trust), [old.der.clone(), new.der.clone()]);

    // Retire: the pushed bundle and the bootstrap file drop the old root.
    trust.replace_domain(Source::Pushed, TD, &new.pem).unwrap();
    assert_eq!(roots(&trust), [old.der.clone(), new.der.clone()]);
    trust.replace(
        Source::Bootstrap,
        TrustBundles::new().with_root(TD, &new.pem).unwrap(),
    );
    assert_eq!(roots(&trust), std::slice::from_ref(&new.der));
}

#[test]
fn a_refused_bundle_changes_nothing() {
    let boot = TestCa::root(TD);
    let trust = Trust::new(TrustBundles::new().with_root(TD, &boot.pem).unwrap());
    let before = trust.shared().load_full();
    assert_eq!(
        trust.replace_domain(Source::Pushed, TD, "not a certificate"),
        Err(BundleError::NoCertificate)
    );
    assert!(matches!(
        trust.replace_domain(Source::Pushed, "bad/domain", &boot.pem),
        Err(BundleError::InvalidTrustDomain(..))
    ));
    // Nothing was even republished.
    assert!(Arc::ptr_eq(&before, &trust.shared().load_full()));
}

#[test]
fn a_preview_publishes_nothing() {
    let boot = TestCa::root(TD);
    let new = TestCa::root(TD);
    let trust = Trust::new(TrustBundles::new().with_root(TD, &boot.pem).unwrap());
    let preview = trust.preview_domain(Source::Issued, TD, &new.pem).unwrap();
    assert_eq!(
        preview.roots_for(TD).unwrap(),
        [boot.der.clone(), new.der.clone()]
    );
    assert_eq!(roots(&trust), std::slice::from_ref(&boot.der));
}

#[test]
fn other_trust_domains_are_kept_apart() {
    let ours = TestCa::root(TD);
    let theirs = TestCa::root("partner.example");
    let trust = Trust::new(TrustBundles::new().with_root(TD, &ours.pem).unwrap());
    trust
        .replace_domain(Source::Pushed, "partner.example", &theirs.pem)
        .unwrap();
    let all = trust.shared().load();
    assert_eq!(all.roots_for(TD).unwrap(), std::slice::from_ref(&ours.der));
    assert_eq!(
        all.roots_for("partner.example").unwrap(),
        std::slice::from_ref(&theirs.der)
    );
    // Replacing everything pushed drops the partner's domain.
    trust.replace(Source::Pushed, TrustBundles::new());
    assert!(trust.shared().load().roots_for("partner.example").is_none());
}

/// A rotation's retired root leaves the union whatever source holds it
/// (here the anchor file and a certificate's bundle), and comes back when
/// it is no longer distrusted.
#[test]
fn a_distrusted_root_leaves_every_source() {
    let old = TestCa::root(TD);
    let new = TestCa::root(TD);
    let trust = Trust::new(TrustBundles::new().with_root(TD, &old.pem).unwrap());
    trust
        .replace_domain(Source::Issued, TD, &format!("{}{}", old.pem, new.pem))
        .unwrap();
    assert_eq!(roots(&trust), [old.der.clone(), new.der.clone()]);
    trust.set_distrusted(TrustBundles::new().with_root(TD, &old.pem).unwrap());
    assert_eq!(roots(&trust), std::slice::from_ref(&new.der));
    trust.set_distrusted(TrustBundles::new());
    assert_eq!(roots(&trust), [old.der.clone(), new.der.clone()]);
}
