use super::*;

#[test]
fn parses_the_four_forms() {
    assert_eq!(StrMatch::parse("a").unwrap(), StrMatch::Exact("a".into()));
    assert_eq!(StrMatch::parse("a*").unwrap(), StrMatch::Prefix("a".into()));
    assert_eq!(StrMatch::parse("*a").unwrap(), StrMatch::Suffix("a".into()));
    assert_eq!(StrMatch::parse("*").unwrap(), StrMatch::Presence);
    assert!(StrMatch::parse("a*b").is_err());
    assert!(StrMatch::parse("*a*").is_err());
    assert!(StrMatch::parse("").is_err());
}

#[test]
fn matches_and_case() {
    assert!(StrMatch::parse("/api*").unwrap().matches("/api/v1"));
    assert!(!StrMatch::parse("/api*").unwrap().matches("/API/v1"));
    assert!(
        StrMatch::parse("*.COM")
            .unwrap()
            .matches_ignore_case("example.com")
    );
    assert!(!StrMatch::Presence.matches(""));
    assert!(StrMatch::Presence.matches("x"));
}

#[test]
fn covers_is_conservative() {
    let p = |s| StrMatch::parse(s).unwrap();
    assert!(p("/a*").covers(&p("/a/b")));
    assert!(p("/a*").covers(&p("/a/b*")));
    assert!(!p("/a/b*").covers(&p("/a*")));
    assert!(p("*").covers(&p("x")));
    assert!(!p("x").covers(&p("*")));
}
