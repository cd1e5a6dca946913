//! Policy propagation: time from a policy file change in the control
//! plane's directory to the new version being in force in each of 50
//! sidecars (in-process proxies, explicit mode, identities from the
//! control plane, one discovery stream each). Run with
//! `cargo bench --bench propagation`; prints p50/p99/max.

use std::time::{Duration, Instant};

use clap::Parser;
use ward_control_plane::attest::JoinTokenStore;
use ward_control_plane::data_dir::DataDir;
use ward_control_plane::server::{Config, ControlPlane};
use ward_identity::SpiffeId;
use ward_proxy::config::RunArgs;

const PROXIES: usize = 50;
const ROUNDS: usize = 20;

#[derive(Parser)]
struct ProxyCli {
    #[command(flatten)]
    run: RunArgs,
}

fn policy(round: usize) -> String {
    format!(
        "apiVersion: security.ward.io/v1\nkind: AuthorizationPolicy\nmetadata:\n  name: bench\n  namespace: bench\nspec:\n  selector:\n    matchLabels:\n      app: bench\n  action: ALLOW\n  rules:\n  - to:\n    - operation:\n        paths: [\"/round/{round}/*\"]\n"
    )
}

fn write_atomically(path: &std::path::Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, contents).expect("write policy");
    std::fs::rename(&tmp, path).expect("rename policy");
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index]
}

fn main() {
    // `cargo bench` passes --bench; nothing to parse.
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(run());
}

async fn run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let policies = dir.path().join("policies");
    std::fs::create_dir_all(&policies).expect("policy dir");
    let file = policies.join("bench.yaml");
    write_atomically(&file, &policy(0));
    let mut config = Config::new("cluster.local", dir.path().join("cp"));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = None;
    config.policy_dir = Some(policies.clone());
    let cp = ControlPlane::start(config).await.expect("control plane");
    let ca = dir.path().join("bundle.pem");
    std::fs::write(&ca, cp.bundle_pem()).unwrap();
    let tokens = JoinTokenStore::open(
        &DataDir::open(dir.path().join("cp"))
            .unwrap()
            .join_tokens_dir(),
    )
    .unwrap();

    let mut proxies = Vec::new();
    for i in 0..PROXIES {
        let id = SpiffeId::for_service_account("cluster.local", "bench", &format!("w{i}")).unwrap();
        let token = tokens.create(&id, Duration::from_secs(600)).unwrap();
        let argv = [
            "ward-proxy".to_owned(),
            "--admin".into(),
            "127.0.0.1:0".into(),
            "--inbound".into(),
            "127.0.0.1:0=9".into(),
            "--control-plane".into(),
            cp.api_addr().to_string(),
            "--ca".into(),
            ca.display().to_string(),
            "--spiffe-id".into(),
            id.to_string(),
            "--join-token".into(),
            token,
            "--label".into(),
            "app=bench".into(),
        ];
        let args = ProxyCli::try_parse_from(argv).expect("flags").run;
        proxies.push(ward_proxy::proxy::start(&args).await.expect("proxy"));
    }
    let versions = |proxies: &[ward_proxy::proxy::Running]| -> Vec<Option<u64>> {
        proxies
            .iter()
            .map(|p| p.policy.as_ref().and_then(|a| a.version()))
            .collect()
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while versions(&proxies).iter().any(Option::is_none) {
        assert!(
            Instant::now() < deadline,
            "proxies did not all receive the first policy set"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut delays = Vec::with_capacity(PROXIES * ROUNDS);
    for round in 1..=ROUNDS {
        let before = versions(&proxies);
        let changed = Instant::now();
        write_atomically(&file, &policy(round));
        let mut seen = vec![None; PROXIES];
        let deadline = changed + Duration::from_secs(10);
        while seen.iter().any(Option::is_none) {
            assert!(
                Instant::now() < deadline,
                "round {round}: not every proxy got the change"
            );
            for (i, v) in versions(&proxies).into_iter().enumerate() {
                if seen[i].is_none() && v != before[i] {
                    seen[i] = Some(changed.elapsed());
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        delays.extend(seen.into_iter().flatten());
        // Irregular pauses, so the samples do not lock onto any periodic
        // work (the directory is watched with inotify, not polled).
        let pause = 50 + (round as u64 * 73) % 200;
        tokio::time::sleep(Duration::from_millis(pause)).await;
    }
    delays.sort();
    println!(
        "policy propagation, file change -> in force, {PROXIES} proxies x {ROUNDS} changes ({} samples): p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms",
        delays.len(),
        percentile(&delays, 0.50).as_secs_f64() * 1e3,
        percentile(&delays, 0.99).as_secs_f64() * 1e3,
        delays.last().unwrap().as_secs_f64() * 1e3,
    );
    for p in proxies {
        p.drain(Duration::from_secs(1)).await;
    }
    cp.shutdown().await;
}
