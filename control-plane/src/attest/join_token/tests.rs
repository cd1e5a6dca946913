use std::sync::{Arc, Barrier};
use std::thread;

use super::*;

fn id(s: &str) -> SpiffeId {
    SpiffeId::parse(s).unwrap()
}

fn api() -> SpiffeId {
    id("spiffe://example.org/ns/payments/sa/api")
}

fn store() -> (tempfile::TempDir, JoinTokenStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = JoinTokenStore::open(&dir.path().join("join-tokens")).unwrap();
    (dir, store)
}

const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn token_is_prefixed_32_random_bytes_base64url_unpadded() {
    let (_dir, store) = store();
    for _ in 0..200 {
        let a = store.create(&api(), HOUR).unwrap();
        let b = store.create(&api(), HOUR).unwrap();
        let body = a.strip_prefix("wjt_").expect("prefixed");
        assert_eq!(URL_SAFE_NO_PAD.decode(body).unwrap().len(), 32);
        assert_eq!(body.len(), 43, "no padding");
        assert_ne!(a, b);
    }
}

#[test]
fn consume_succeeds_once_then_replay_is_refused() {
    let (_dir, store) = store();
    let token = store.create(&api(), HOUR).unwrap();
    let now = SystemTime::now();
    assert_eq!(store.consume(&token, &api(), now).unwrap(), api());
    let replay = store.consume(&token, &api(), now).unwrap_err();
    assert!(
        matches!(replay, AttestError::TokenAlreadyUsed),
        "{replay:?}"
    );
    assert_eq!(replay.reason(), "token_reused");
    assert_eq!(replay.method(), "join_token");
}

#[test]
fn expired_token_is_refused_and_retired() {
    let (_dir, store) = store();
    let token = store.create(&api(), HOUR).unwrap();
    let later = SystemTime::now() + HOUR + Duration::from_secs(1);
    let err = store.consume(&token, &api(), later).unwrap_err();
    assert!(matches!(err, AttestError::TokenExpired), "{err:?}");
    assert_eq!(err.reason(), "token_expired");
    // Even against a clock that says it is still valid, it can never succeed.
    let err = store
        .consume(&token, &api(), SystemTime::now())
        .unwrap_err();
    assert!(matches!(err, AttestError::TokenAlreadyUsed), "{err:?}");
}

#[test]
fn wrong_id_is_refused_without_consuming() {
    let (_dir, store) = store();
    let token = store.create(&api(), HOUR).unwrap();
    let other = id("spiffe://example.org/ns/payments/sa/admin");
    let err = store
        .consume(&token, &other, SystemTime::now())
        .unwrap_err();
    match &err {
        AttestError::TokenIdMismatch { bound, requested } => {
            assert_eq!(*bound, api());
            assert_eq!(*requested, other);
        }
        other => panic!("expected TokenIdMismatch, got {other:?}"),
    }
    assert_eq!(err.reason(), "id_mismatch");
    assert_eq!(
        store.consume(&token, &api(), SystemTime::now()).unwrap(),
        api()
    );
}

#[test]
fn unknown_token_is_refused() {
    let (_dir, store) = store();
    store.create(&api(), HOUR).unwrap();
    let forged = URL_SAFE_NO_PAD.encode([7u8; 32]);
    for token in [forged.as_str(), "", "../../etc/passwd"] {
        let err = store.consume(token, &api(), SystemTime::now()).unwrap_err();
        assert!(matches!(err, AttestError::TokenUnknown), "{err:?}");
        assert_eq!(err.reason(), "token_unknown");
    }
}

#[test]
fn store_holds_only_the_hash_of_the_token() {
    let (dir, store) = store();
    let token = store.create(&api(), HOUR).unwrap();
    let pending = dir.path().join("join-tokens").join(PENDING);
    let names: Vec<_> = fs::read_dir(&pending)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, [hex::encode(Sha256::digest(token.as_bytes()))]);

    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(pending.join(&names[0])).unwrap()).unwrap();
    assert_eq!(record["spiffe_id"], api().as_str());
    assert!(record["expires_at"].as_u64().unwrap() >= record["created_at"].as_u64().unwrap());

    assert_no_file_contains(dir.path(), token.as_bytes());
    store.consume(&token, &api(), SystemTime::now()).unwrap();
    assert_no_file_contains(dir.path(), token.as_bytes());
}

/// Recursively reads every file and name under `dir`, looking for `needle`.
fn assert_no_file_contains(dir: &Path, needle: &[u8]) {
    for entry in fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let name = entry.file_name().into_string().unwrap();
        assert!(!name.as_bytes().windows(needle.len()).any(|w| w == needle));
        let path = entry.path();
        if path.is_dir() {
            assert_no_file_contains(&path, needle);
        } else {
            let contents = fs::read(&path).unwrap();
            assert!(
                !contents.windows(needle.len()).any(|w| w == needle),
                "{} contains the raw token",
                path.display()
            );
        }
    }
}

#[test]
fn concurrent_consumers_exactly_one_wins() {
    const RACERS: usize = 8;
    for _ in 0..20 {
        let (_dir, store) = store();
        let token = store.create(&api(), HOUR).unwrap();
        let barrier = Arc::new(Barrier::new(RACERS));
        let handles: Vec<_> = (0..RACERS)
            .map(|_| {
                let (store, token, barrier) = (store.clone(), token.clone(), barrier.clone());
                thread::spawn(move || {
                    barrier.wait();
                    store.consume(&token, &api(), SystemTime::now())
                })
            })
            .collect();
        let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        let wins = results.iter().filter(|r| r.is_ok()).count();
        assert_eq!(wins, 1, "{results:?}");
        for result in results.iter().filter_map(|r| r.as_ref().err()) {
            assert!(
                matches!(result, AttestError::TokenAlreadyUsed),
                "{result:?}"
            );
        }
    }
}

#[test]
fn separate_store_handles_share_tokens() {
    // The CLI and the control plane open the same directory independently.
    let (dir, cli) = store();
    let token = cli.create(&api(), HOUR).unwrap();
    let server = JoinTokenStore::open(&dir.path().join("join-tokens")).unwrap();
    assert_eq!(
        server.consume(&token, &api(), SystemTime::now()).unwrap(),
        api()
    );
    let err = cli.consume(&token, &api(), SystemTime::now()).unwrap_err();
    assert!(matches!(err, AttestError::TokenAlreadyUsed), "{err:?}");
}

#[test]
fn prune_removes_only_expired_records() {
    let (_dir, store) = store();
    let short = store.create(&api(), Duration::from_secs(60)).unwrap();
    let used_short = store.create(&api(), Duration::from_secs(60)).unwrap();
    let long = store.create(&api(), HOUR).unwrap();
    store
        .consume(&used_short, &api(), SystemTime::now())
        .unwrap();

    let later = SystemTime::now() + Duration::from_secs(120);
    assert_eq!(store.prune_expired(later).unwrap(), 2);
    let err = store.consume(&short, &api(), later).unwrap_err();
    assert!(matches!(err, AttestError::TokenUnknown), "{err:?}");
    assert_eq!(store.consume(&long, &api(), later).unwrap(), api());
}

#[test]
fn corrupt_record_is_reported() {
    let (dir, store) = store();
    let token = store.create(&api(), HOUR).unwrap();
    let path = dir
        .path()
        .join("join-tokens")
        .join(PENDING)
        .join(token_hash(&token));
    fs::write(&path, b"{not json").unwrap();
    let err = store
        .consume(&token, &api(), SystemTime::now())
        .unwrap_err();
    assert!(
        matches!(err, AttestError::TokenRecordCorrupt { .. }),
        "{err:?}"
    );
}

#[cfg(unix)]
#[test]
fn files_are_0600_and_directories_0700() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;

    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("join-tokens");
    // A pre-existing, too-open directory is tightened.
    fs::create_dir(&root).unwrap();
    fs::set_permissions(&root, fs::Permissions::from_mode(0o755)).unwrap();
    let store = JoinTokenStore::open(&root).unwrap();
    let token = store.create(&api(), HOUR).unwrap();

    for sub in ["", PENDING, USED, TMP] {
        assert_eq!(mode(&root.join(sub)), 0o700, "{sub:?}");
    }
    let hash = token_hash(&token);
    assert_eq!(mode(&root.join(PENDING).join(&hash)), 0o600);
    store.consume(&token, &api(), SystemTime::now()).unwrap();
    assert_eq!(mode(&root.join(USED).join(&hash)), 0o600);
    assert_eq!(
        fs::read_dir(root.join(TMP)).unwrap().count(),
        0,
        "no temp left"
    );
}
