use super::cli::{List, parse_inbound_ports};
use super::*;

fn lines(config: &CaptureConfig, family: Family) -> Vec<String> {
    rules(config)
        .iter()
        .filter(|r| r.family == family)
        .map(Rule::to_string)
        .collect()
}

#[test]
fn default_ipv4_rules_follow_istio_init() {
    assert_eq!(
        lines(&CaptureConfig::default(), Family::V4),
        [
            "-A WARD_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A WARD_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
            "-A WARD_INBOUND -p tcp --dport 15020 -j RETURN",
            "-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT",
            "-A WARD_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN",
            "-A WARD_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --uid-owner 1337 -j WARD_INBOUND",
            "-A WARD_OUTPUT -o lo -j RETURN",
            "-A WARD_OUTPUT -m owner --uid-owner 1337 -j RETURN",
            "-A WARD_OUTPUT -d 127.0.0.1/32 -j RETURN",
            "-A WARD_OUTPUT -j WARD_REDIRECT",
        ]
    );
}

#[test]
fn ipv6_rules_use_ipv6_loopback_and_only_ipv6_cidrs() {
    let config = CaptureConfig {
        exclude_outbound_cidrs: vec!["10.0.0.0/8".parse().unwrap(), "fd00::/8".parse().unwrap()],
        ..CaptureConfig::default()
    };
    let v6 = lines(&config, Family::V6);
    assert!(v6.contains(&"-A WARD_OUTPUT -d ::1/128 -j RETURN".to_string()));
    assert!(v6.contains(&"-A WARD_OUTPUT -d fd00::/8 -j RETURN".to_string()));
    assert!(
        !v6.iter()
            .any(|l| l.contains("127.0.0.1") || l.contains("10.0.0.0"))
    );
    let v4 = lines(&config, Family::V4);
    assert!(v4.contains(&"-A WARD_OUTPUT -d 10.0.0.0/8 -j RETURN".to_string()));
    assert!(!v4.iter().any(|l| l.contains("fd00") || l.contains("::1")));
}

#[test]
fn ipv6_returns_the_inbound_source_first_as_ipv4_does() {
    let v6 = lines(&CaptureConfig::default(), Family::V6);
    let output: Vec<&String> = v6
        .iter()
        .filter(|l| l.starts_with("-A WARD_OUTPUT"))
        .collect();
    assert_eq!(output[0], "-A WARD_OUTPUT -s ::6/128 -o lo -j RETURN");
    assert_eq!(
        output[1],
        "-A WARD_OUTPUT -o lo ! -d ::1/128 -m owner --uid-owner 1337 -j WARD_INBOUND"
    );
    assert_eq!(Family::V4.inbound_source(), "127.0.0.6/32");
}

#[test]
fn ipv6_capture_adds_the_inbound_source_to_lo_first_and_remove_deletes_it() {
    let plan = apply_plan(&CaptureConfig::default(), &[Family::V4, Family::V6]);
    assert_eq!(
        plan[0],
        Step::AddLoopbackAddress {
            address: "::6/128".to_owned()
        }
    );
    assert_eq!(
        plan[0].to_string(),
        "[ \"$(cat /proc/sys/net/ipv6/conf/lo/disable_ipv6 2>/dev/null)\" = 0 ] \
         && ip -6 addr replace ::6/128 dev lo nodad"
    );
    assert_eq!(
        plan.iter()
            .filter(|s| matches!(s, Step::AddLoopbackAddress { .. }))
            .count(),
        1
    );
    // IPv4 only: no address.
    let v4 = apply_plan(&CaptureConfig::default(), &[Family::V4]);
    assert!(!v4.iter().any(|s| s.to_string().contains("addr")));

    let removal = remove_plan(&[Family::V4, Family::V6]);
    let last = removal.last().unwrap();
    assert_eq!(
        last,
        &Step::DeleteLoopbackAddress {
            address: "::6/128".to_owned()
        }
    );
    assert_eq!(
        last.to_string(),
        "ip -6 -o addr show dev lo to ::6/128 | grep -q . && ip -6 addr del ::6/128 dev lo"
    );
    assert!(
        !remove_plan(&[Family::V4])
            .iter()
            .any(|s| matches!(s, Step::DeleteLoopbackAddress { .. }))
    );
}

#[test]
fn exclusions_come_before_the_catch_all_redirects() {
    let config = CaptureConfig {
        exclude_inbound_ports: vec![22, 8081],
        exclude_outbound_ports: vec![5432],
        proxy_gid: Some(1338),
        ..CaptureConfig::default()
    };
    let v4 = lines(&config, Family::V4);
    let pos = |needle: &str| v4.iter().position(|l| l == needle).expect(needle);
    let redirect_in = pos("-A WARD_INBOUND -p tcp -j WARD_IN_REDIRECT");
    assert!(pos("-A WARD_INBOUND -p tcp --dport 22 -j RETURN") < redirect_in);
    assert!(pos("-A WARD_INBOUND -p tcp --dport 8081 -j RETURN") < redirect_in);
    let redirect_out = pos("-A WARD_OUTPUT -j WARD_REDIRECT");
    assert!(pos("-A WARD_OUTPUT -p tcp --dport 5432 -j RETURN") < redirect_out);
    assert!(pos("-A WARD_OUTPUT -m owner --gid-owner 1338 -j RETURN") < redirect_out);
    // The proxy-to-itself rule must precede the blanket lo RETURN.
    assert!(
        pos("-A WARD_OUTPUT -o lo ! -d 127.0.0.1/32 -m owner --gid-owner 1338 -j WARD_INBOUND")
            < pos("-A WARD_OUTPUT -o lo -j RETURN")
    );
    assert_eq!(v4.last().unwrap(), "-A WARD_OUTPUT -j WARD_REDIRECT");
}

#[test]
fn included_inbound_ports_replace_the_catch_all() {
    let config = CaptureConfig {
        include_inbound_ports: InboundPorts::Only(vec![8080, 9090]),
        ..CaptureConfig::default()
    };
    let inbound: Vec<_> = lines(&config, Family::V4)
        .into_iter()
        .filter(|l| l.starts_with("-A WARD_INBOUND"))
        .collect();
    assert_eq!(
        inbound,
        [
            "-A WARD_INBOUND -p tcp --dport 15020 -j RETURN",
            "-A WARD_INBOUND -p tcp --dport 8080 -j WARD_IN_REDIRECT",
            "-A WARD_INBOUND -p tcp --dport 9090 -j WARD_IN_REDIRECT",
        ]
    );
}

#[test]
fn apply_plan_restores_chains_atomically_then_ensures_jumps() {
    let plan = apply_plan(&CaptureConfig::default(), &[Family::V4]);
    assert_eq!(plan.len(), 3);
    let Step::Restore { family, input } = &plan[0] else {
        panic!("first step must be the restore: {plan:?}");
    };
    assert_eq!(*family, Family::V4);
    assert!(input.starts_with("*nat\n:WARD_INBOUND - [0:0]\n"));
    assert!(input.ends_with("-A WARD_OUTPUT -j WARD_REDIRECT\nCOMMIT\n"));
    assert!(!input.contains("PREROUTING") && !input.contains("-A OUTPUT"));
    assert_eq!(
        plan[1].to_string(),
        "iptables -w -t nat -C PREROUTING -p tcp -j WARD_INBOUND 2>/dev/null \
         || iptables -w -t nat -A PREROUTING -p tcp -j WARD_INBOUND"
    );
    assert!(matches!(&plan[2], Step::EnsureRule(r) if r.chain == "OUTPUT"));
}

#[test]
fn apply_plan_covers_only_the_given_families() {
    let both = apply_plan(&CaptureConfig::default(), &[Family::V4, Family::V6]);
    assert!(
        both.iter()
            .any(|s| s.to_string().starts_with("ip6tables-restore"))
    );
    let v4 = apply_plan(&CaptureConfig::default(), &[Family::V4]);
    assert!(!v4.iter().any(|s| s.to_string().contains("ip6tables")));
}

#[test]
fn remove_plan_unhooks_then_flushes_then_deletes_only_ward_chains() {
    let plan = remove_plan(&[Family::V4]);
    let kinds: Vec<&str> = plan
        .iter()
        .map(|s| match s {
            Step::DeleteRule(_) => "unhook",
            Step::FlushChain { .. } => "flush",
            Step::DeleteChain { .. } => "delete",
            other => panic!("unexpected step {other:?}"),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "unhook", "unhook", "flush", "flush", "flush", "flush", "delete", "delete", "delete",
            "delete"
        ]
    );
    for step in &plan {
        if let Step::FlushChain { chain, .. } | Step::DeleteChain { chain, .. } = step {
            assert!(chain.starts_with("WARD_"), "{chain}");
        }
    }
}

#[test]
fn cidr_parsing() {
    assert_eq!(
        "10.0.0.0/8".parse::<Cidr>().unwrap().to_string(),
        "10.0.0.0/8"
    );
    assert_eq!(
        "10.1.2.3".parse::<Cidr>().unwrap().to_string(),
        "10.1.2.3/32"
    );
    assert_eq!("fd00::/8".parse::<Cidr>().unwrap().to_string(), "fd00::/8");
    assert_eq!("::1".parse::<Cidr>().unwrap().prefix(), 128);
    for bad in [
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/+8",
        "10.0.0.0/",
        "nope/8",
        "",
    ] {
        assert!(bad.parse::<Cidr>().is_err(), "{bad:?} parsed");
    }
}

#[test]
fn inbound_port_and_list_parsing() {
    assert_eq!(parse_inbound_ports("*"), Ok(InboundPorts::All));
    assert_eq!(
        parse_inbound_ports("80, 443"),
        Ok(InboundPorts::Only(vec![80, 443]))
    );
    assert!(parse_inbound_ports("80,x").is_err());
    assert_eq!(List::<u16>::parse(""), Ok(List(vec![])));
    assert_eq!(List::<u16>::parse("1,2"), Ok(List(vec![1, 2])));
    assert!(List::<u16>::parse("70000").is_err());
}
