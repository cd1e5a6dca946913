//! The evaluation index of one workload's policies. Every rule is filed
//! under one thing a request must carry for the rule to match — an exact
//! principal, namespace or service account, an exact path or a path
//! prefix/suffix, a destination port, a method — or, when it requires none
//! of these, in a list tried for every request. A request looks up its own
//! values and tries only the rules found, in policy order; rules filed
//! under other values cannot match it and cost nothing.
//!
//! Each rule is filed under the most selective field it has: identity,
//! then path, then port, then method. The HTTP table uses them all; the TCP
//! table leaves out the ALLOW/AUDIT rules that need HTTP fields (they never
//! match a TCP connection) and files DENY rules by identity or port only
//! (their HTTP fields are ignored on TCP).

use super::matching::{Ctx, TcpMode, service_accounts_in};
use crate::matcher::StrMatch;
use crate::model::*;
// foldhash: keys are policy values, hashed once per request and field; the
// standard SipHash costs several times more for them, and only lookups use
// request data (nothing a client sends is inserted).
use foldhash::HashMap;
use std::sync::Arc;

/// Where a rule's policy is listed; the order in which matches are looked
/// for (dry-run and AUDIT matches are all reported, then the first DENY,
/// then the first ALLOW).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Category {
    DryRun,
    Audit,
    Deny,
    Allow,
}

/// One rule: its policy's category and position, and its own position.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Entry {
    pub(crate) category: Category,
    pub(crate) policy: u32,
    pub(crate) rule: u32,
}

/// Rule ids (positions in `entries`), ascending.
type Ids = Vec<u32>;

#[derive(Debug, Clone, Default)]
pub(crate) struct Index {
    /// Every rule, in evaluation order: category, policy, rule.
    entries: Vec<Entry>,
    http: Table,
    tcp: Table,
}

#[derive(Debug, Clone, Default)]
struct Table {
    /// Rules filed under nothing: tried for every request.
    always: Ids,
    principal: HashMap<Box<str>, Ids>,
    namespace: HashMap<Box<str>, Ids>,
    /// Namespace, then service account.
    service_account: HashMap<Box<str>, HashMap<Box<str>, Ids>>,
    port: HashMap<u16, Ids>,
    /// By the position of the method's bit in `KNOWN_METHODS`.
    method: [Ids; KNOWN_METHODS.len()],
    path_exact: HashMap<Box<str>, Ids>,
    path_prefix: HashMap<Box<str>, Ids>,
    /// The distinct lengths of `path_prefix` keys, ascending.
    prefix_lens: Vec<usize>,
    path_suffix: HashMap<Box<str>, Ids>,
    suffix_lens: Vec<usize>,
}

/// What a rule is filed under.
enum Keys {
    Identity(Vec<IdKey>),
    Path(Vec<PathKey>),
    Port(Vec<u16>),
    Method(u16),
    Always,
}

enum IdKey {
    Principal(Box<str>),
    Namespace(Box<str>),
    ServiceAccount(Box<str>, Box<str>),
}

enum PathKey {
    Exact(Box<str>),
    Prefix(Box<str>),
    Suffix(Box<str>),
}

/// Shorter path prefixes and suffixes (`/`, `*` alone) match nearly every
/// request: such rules are tried always rather than filed.
const MIN_AFFIX: usize = 2;

impl Index {
    /// Files every rule of the four lists (categories in evaluation order).
    pub(crate) fn build(lists: [(Category, &[Arc<AuthorizationPolicy>]); 4]) -> Index {
        let mut index = Index::default();
        for (category, list) in lists {
            for (p, policy) in list.iter().enumerate() {
                for (r, rule) in policy.rules.iter().enumerate() {
                    let id = index.entries.len() as u32;
                    index.entries.push(Entry {
                        category,
                        policy: p as u32,
                        rule: r as u32,
                    });
                    index.http.file(id, keys(rule, true));
                    // On TCP an ALLOW/AUDIT rule with HTTP fields never
                    // matches; a DENY rule ignores them.
                    let tcp = TcpMode::of(policy.action, false);
                    if !(tcp == TcpMode::NeverMatch && rule.has_http_fields()) {
                        index.tcp.file(id, keys(rule, false));
                    }
                }
            }
        }
        index.http.finish();
        index.tcp.finish();
        index
    }

    pub(crate) fn entry(&self, id: u32) -> Entry {
        self.entries[id as usize]
    }

    /// How many rules are filed.
    pub(crate) fn rules(&self) -> usize {
        self.entries.len()
    }

    /// The rules `c` may match, ascending, each once.
    pub(crate) fn candidates<'i>(&'i self, c: &Ctx<'_>) -> Candidates<'i> {
        let t = if c.http { &self.http } else { &self.tcp };
        let mut out = Candidates::default();
        out.push(&t.always);
        if let Some(p) = c.principal
            && !t.principal.is_empty()
        {
            out.push_found(t.principal.get(p));
        }
        if let Some(ns) = c.namespace
            && !t.namespace.is_empty()
        {
            out.push_found(t.namespace.get(ns));
        }
        if !t.service_account.is_empty() {
            let mut account = |ns: &str, sa: &str| {
                out.push_found(t.service_account.get(ns).and_then(|m| m.get(sa)));
            };
            match (c.ns_sa, c.id_path) {
                (Some((ns, sa)), _) => account(ns, sa),
                (None, Some(path)) => {
                    service_accounts_in(path).for_each(|(ns, sa)| account(ns, sa))
                }
                (None, None) => {}
            }
        }
        if !t.port.is_empty() {
            out.push_found(t.port.get(&c.req.destination_port));
        }
        if c.http {
            if let Some(bit) = c.method_bit {
                out.push(&t.method[bit.trailing_zeros() as usize]);
            }
            let path = c.path;
            if !t.path_exact.is_empty() {
                out.push_found(t.path_exact.get(path));
            }
            for &len in &t.prefix_lens {
                if len > path.len() {
                    break;
                }
                if let Some(prefix) = path.get(..len) {
                    out.push_found(t.path_prefix.get(prefix));
                }
            }
            for &len in &t.suffix_lens {
                if len > path.len() {
                    break;
                }
                if let Some(suffix) = path.get(path.len() - len..) {
                    out.push_found(t.path_suffix.get(suffix));
                }
            }
        }
        out.start();
        out
    }
}

fn add(ids: &mut Ids, id: u32) {
    // Ids arrive ascending; a rule filed twice under one key (two sources
    // naming the same principal) is listed once.
    if ids.last() != Some(&id) {
        ids.push(id);
    }
}

impl Table {
    fn file(&mut self, id: u32, keys: Keys) {
        match keys {
            Keys::Always => add(&mut self.always, id),
            Keys::Identity(keys) => {
                for key in keys {
                    match key {
                        IdKey::Principal(p) => add(self.principal.entry(p).or_default(), id),
                        IdKey::Namespace(n) => add(self.namespace.entry(n).or_default(), id),
                        IdKey::ServiceAccount(ns, sa) => add(
                            self.service_account
                                .entry(ns)
                                .or_default()
                                .entry(sa)
                                .or_default(),
                            id,
                        ),
                    }
                }
            }
            Keys::Path(keys) => {
                for key in keys {
                    match key {
                        PathKey::Exact(p) => add(self.path_exact.entry(p).or_default(), id),
                        PathKey::Prefix(p) => add(self.path_prefix.entry(p).or_default(), id),
                        PathKey::Suffix(s) => add(self.path_suffix.entry(s).or_default(), id),
                    }
                }
            }
            Keys::Port(ports) => {
                for port in ports {
                    add(self.port.entry(port).or_default(), id);
                }
            }
            Keys::Method(bits) => {
                for (i, ids) in self.method.iter_mut().enumerate() {
                    if bits & (1 << i) != 0 {
                        add(ids, id);
                    }
                }
            }
        }
    }

    fn finish(&mut self) {
        let lens = |m: &HashMap<Box<str>, Ids>| {
            let mut l: Vec<usize> = m.keys().map(|k| k.len()).collect();
            l.sort_unstable();
            l.dedup();
            l
        };
        self.prefix_lens = lens(&self.path_prefix);
        self.suffix_lens = lens(&self.path_suffix);
    }
}

/// The keys to file `rule` under, the most selective field first.
fn keys(rule: &Rule, http: bool) -> Keys {
    if let Some(k) = identity_keys(rule) {
        return Keys::Identity(k);
    }
    if http && let Some(k) = path_keys(rule) {
        return Keys::Path(k);
    }
    if let Some(k) = port_keys(rule) {
        return Keys::Port(k);
    }
    if http && let Some(bits) = method_keys(rule) {
        return Keys::Method(bits);
    }
    Keys::Always
}

/// Every value exact (and at least one): the values.
fn exact(values: &[StrMatch]) -> Option<Vec<Box<str>>> {
    if values.is_empty() {
        return None;
    }
    values
        .iter()
        .map(|m| match m {
            StrMatch::Exact(v) => Some(v.clone()),
            _ => None,
        })
        .collect()
}

fn accounts(values: &[ServiceAccount]) -> Option<Vec<IdKey>> {
    (!values.is_empty()).then(|| {
        values
            .iter()
            .map(|sa| IdKey::ServiceAccount(sa.namespace.clone(), sa.name.clone()))
            .collect()
    })
}

/// One source's identity requirement: its fields are ANDed, so any one
/// exact field will do.
fn source_keys(s: &Source) -> Option<Vec<IdKey>> {
    if let Some(v) = exact(&s.principals) {
        return Some(v.into_iter().map(IdKey::Principal).collect());
    }
    if let Some(v) = exact(&s.namespaces) {
        return Some(v.into_iter().map(IdKey::Namespace).collect());
    }
    accounts(&s.service_accounts)
}

fn condition_keys(c: &Condition) -> Option<Vec<IdKey>> {
    match (&c.key, &c.values) {
        (ConditionKey::SourcePrincipal, CondValues::Str(v)) => {
            exact(v).map(|v| v.into_iter().map(IdKey::Principal).collect())
        }
        (ConditionKey::SourceNamespace, CondValues::Str(v)) => {
            exact(v).map(|v| v.into_iter().map(IdKey::Namespace).collect())
        }
        (ConditionKey::SourceServiceAccount, CondValues::ServiceAccount(v)) => accounts(v),
        _ => None,
    }
}

/// Sources are ORed (each must name identities for the rule to be filed by
/// identity); conditions are ANDed (any one naming identities will do).
fn identity_keys(rule: &Rule) -> Option<Vec<IdKey>> {
    let from = if rule.from.is_empty() {
        None
    } else {
        rule.from
            .iter()
            .map(source_keys)
            .collect::<Option<Vec<_>>>()
            .map(|v| v.into_iter().flatten().collect::<Vec<_>>())
    };
    let when = rule
        .when
        .iter()
        .filter_map(condition_keys)
        .min_by_key(Vec::len);
    match (from, when) {
        (Some(f), Some(w)) => Some(if w.len() < f.len() { w } else { f }),
        (f, w) => f.or(w),
    }
}

/// Every operation (ORed) must restrict the path to filable values.
fn path_keys(rule: &Rule) -> Option<Vec<PathKey>> {
    if rule.to.is_empty() {
        return None;
    }
    let mut out = Vec::new();
    for op in &rule.to {
        if op.paths.is_empty() {
            return None;
        }
        for p in &op.paths {
            out.push(match p {
                PathMatch::Str(StrMatch::Exact(v)) => PathKey::Exact(v.clone()),
                PathMatch::Str(StrMatch::Prefix(v)) if v.len() >= MIN_AFFIX => {
                    PathKey::Prefix(v.clone())
                }
                PathMatch::Str(StrMatch::Suffix(v)) if v.len() >= MIN_AFFIX => {
                    PathKey::Suffix(v.clone())
                }
                PathMatch::Template(t) if t.literal_prefix().len() >= MIN_AFFIX => {
                    PathKey::Prefix(t.literal_prefix().into())
                }
                _ => return None,
            });
        }
    }
    Some(out)
}

/// Every operation restricts the port, or a condition does.
fn port_keys(rule: &Rule) -> Option<Vec<u16>> {
    let from_ops =
        (!rule.to.is_empty() && rule.to.iter().all(|op| !op.ports.is_empty())).then(|| {
            rule.to
                .iter()
                .flat_map(|op| op.ports.iter().copied())
                .collect()
        });
    from_ops.or_else(|| {
        rule.when.iter().find_map(|c| match (&c.key, &c.values) {
            (ConditionKey::DestinationPort, CondValues::Port(p)) if !p.is_empty() => {
                Some(p.clone())
            }
            _ => None,
        })
    })
}

/// Every operation restricts the method to known methods.
fn method_keys(rule: &Rule) -> Option<u16> {
    if rule.to.is_empty() {
        return None;
    }
    let mut bits = 0;
    for op in &rule.to {
        if op.methods.is_empty() || !op.methods.other.is_empty() {
            return None;
        }
        bits |= op.methods.known;
    }
    Some(bits)
}

/// Most lists merged without allocating; more spill to a sorted vector.
const INLINE: usize = 16;

/// The candidate rules of one request: the union of the lists it found,
/// ascending, without duplicates.
pub(crate) struct Candidates<'i> {
    heads: [&'i [u32]; INLINE],
    n: usize,
    spill: Vec<u32>,
    spilled: usize,
    /// The lists' lengths added up (a rule in two lists counts twice).
    total: usize,
}

impl Default for Candidates<'_> {
    fn default() -> Self {
        Candidates {
            heads: [&[]; INLINE],
            n: 0,
            spill: Vec::new(),
            spilled: 0,
            total: 0,
        }
    }
}

impl<'i> Candidates<'i> {
    fn push_found(&mut self, ids: Option<&'i Ids>) {
        if let Some(ids) = ids {
            self.push(ids);
        }
    }

    /// At most this many rules are candidates.
    pub(crate) fn at_most(&self) -> usize {
        self.total
    }

    fn push(&mut self, ids: &'i [u32]) {
        if ids.is_empty() {
            return;
        }
        self.total += ids.len();
        if self.n < INLINE {
            self.heads[self.n] = ids;
            self.n += 1;
        } else {
            self.spill.extend_from_slice(ids);
        }
    }

    /// Many lists (a path with many filed prefixes): all merged once.
    fn start(&mut self) {
        if !self.spill.is_empty() {
            for ids in &self.heads[..self.n] {
                self.spill.extend_from_slice(ids);
            }
            self.n = 0;
            self.spill.sort_unstable();
            self.spill.dedup();
        }
    }
}

impl Iterator for Candidates<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.spilled < self.spill.len() {
            self.spilled += 1;
            return Some(self.spill[self.spilled - 1]);
        }
        let heads = &mut self.heads[..self.n];
        let min = heads.iter().filter_map(|h| h.first()).min().copied()?;
        for h in heads.iter_mut() {
            let ids: &[u32] = h;
            if ids.first() == Some(&min) {
                *h = &ids[1..];
            }
        }
        Some(min)
    }
}

#[cfg(test)]
mod tests;
