//! The policy model and its parser: HuJSON text to a validated [`Policy`].

use crate::hujson::{self, Key, Kind, Pos, Value};
use ipnet::IpNet;
use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;

/// A policy error: where, and why. Its `Display` is `line:column: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}:{}: {reason}", pos.line, pos.column)]
pub struct PolicyError {
    /// Where in the policy text the problem is.
    pub pos: Pos,
    /// What is wrong, in words.
    pub reason: String,
}

impl PolicyError {
    pub(crate) fn new(pos: Pos, reason: impl Into<String>) -> Self {
        Self {
            pos,
            reason: reason.into(),
        }
    }
    /// 1-based line.
    pub fn line(&self) -> u32 {
        self.pos.line
    }
    /// 1-based column.
    pub fn column(&self) -> u32 {
        self.pos.column
    }
}

impl From<hujson::SyntaxError> for PolicyError {
    fn from(e: hujson::SyntaxError) -> Self {
        Self::new(e.pos, e.reason)
    }
}

/// Autogroups the policy language knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AutoGroup {
    /// Every untagged node.
    Member,
    /// Every tagged node.
    Tagged,
    /// (destination only) the destination node's own user's untagged nodes.
    SelfDevices,
    /// (destination only) the public internet, through exit nodes.
    Internet,
    /// (SSH users only) any non-root user.
    NonRoot,
    /// (source only) every IP address, inside the tailnet or not.
    DangerAll,
}

impl AutoGroup {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "autogroup:member" => Self::Member,
            "autogroup:tagged" => Self::Tagged,
            "autogroup:self" => Self::SelfDevices,
            "autogroup:internet" => Self::Internet,
            "autogroup:nonroot" => Self::NonRoot,
            "autogroup:danger-all" => Self::DangerAll,
            _ => return None,
        })
    }
    /// The policy spelling, e.g. `autogroup:self`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Member => "autogroup:member",
            Self::Tagged => "autogroup:tagged",
            Self::SelfDevices => "autogroup:self",
            Self::Internet => "autogroup:internet",
            Self::NonRoot => "autogroup:nonroot",
            Self::DangerAll => "autogroup:danger-all",
        }
    }
}

/// One selector in a `src`/`dst` list.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Alias {
    /// `*`
    Wildcard,
    /// A user by login name (`alice@example.com`, or `alice@`).
    User(String),
    /// `group:name` (defined in `groups`).
    Group(String),
    /// `tag:name` (defined in `tagOwners`).
    Tag(String),
    /// A `hosts` entry, with its resolved prefix.
    Host(String, IpNet),
    /// A literal IP or CIDR.
    Prefix(IpNet),
    /// An autogroup.
    AutoGroup(AutoGroup),
}

impl fmt::Display for Alias {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Alias::Wildcard => f.write_str("*"),
            Alias::User(u) => f.write_str(u),
            Alias::Group(g) | Alias::Tag(g) => f.write_str(g),
            Alias::Host(h, _) => f.write_str(h),
            Alias::Prefix(p) => write!(f, "{p}"),
            Alias::AutoGroup(a) => f.write_str(a.name()),
        }
    }
}

/// An inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ports {
    /// First port.
    pub first: u16,
    /// Last port (inclusive).
    pub last: u16,
}

impl Ports {
    /// Every port.
    pub const ANY: Ports = Ports {
        first: 0,
        last: 65535,
    };
}

/// The protocols of one `ip` entry: `None` means Tailscale's default set
/// (TCP, UDP, ICMPv4, ICMPv6), which is what an ACL without `proto` and a grant `*` mean.
pub type Protos = Option<Vec<u8>>;

/// A destination with the protocols and ports allowed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// What is reached.
    pub alias: Alias,
    /// Where it is written.
    pub pos: Pos,
}

/// One access rule in normalized form: ACL entries become one rule per destination entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Sources.
    pub src: Vec<Alias>,
    /// Destinations.
    pub dst: Vec<Target>,
    /// Protocol groups in first-appearance order, each with its port ranges.
    pub ip: Vec<(Protos, Vec<Ports>)>,
    /// Application capabilities a grant gives its sources on its destinations
    /// (`"app": {"example.com/cap/x": [{...}]}`), compiled into `CapGrant`s.
    pub app: Option<weft_tailcfg::CapMap>,
    /// Where the ACL or grant starts.
    pub pos: Pos,
}

/// A policy `tests` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTest {
    /// Index in the `tests` array.
    pub index: usize,
    /// Where the test starts.
    pub pos: Pos,
    /// The source selector.
    pub src: Alias,
    /// The source as written.
    pub src_text: String,
    /// Protocol to test with (`None` = TCP).
    pub proto: Option<u8>,
    /// Destinations (`alias:port`) that must be reachable.
    pub accept: Vec<(String, Alias, u16)>,
    /// Destinations that must not be reachable.
    pub deny: Vec<(String, Alias, u16)>,
}

impl PolicyTest {
    /// A short human name: `tests[3] (src alice@example.com)`.
    pub fn name(&self) -> String {
        format!("tests[{}] (src {})", self.index, self.src_text)
    }
}

/// Who may be named by `tagOwners` and `autoApprovers`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A user login.
    User(String),
    /// A group.
    Group(String),
    /// A tag (nodes holding it).
    Tag(String),
    /// `autogroup:member`.
    Member,
    /// `autogroup:tagged`.
    Tagged,
}

/// The `autoApprovers` section.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AutoApprovers {
    /// Route prefix -> who may have it (or any prefix inside it) approved automatically.
    pub routes: Vec<(IpNet, Vec<Owner>)>,
    /// Who may be approved as an exit node automatically.
    pub exit_node: Vec<Owner>,
}

/// A parsed, validated policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub(crate) groups: BTreeMap<String, Vec<String>>,
    pub(crate) tag_owners: BTreeMap<String, Vec<Owner>>,
    pub(crate) hosts: BTreeMap<String, IpNet>,
    pub(crate) rules: Vec<Rule>,
    /// False when the policy has neither `acls` nor `grants`: then everything is allowed.
    pub(crate) has_rules: bool,
    pub(crate) tests: Vec<PolicyTest>,
    pub(crate) auto_approvers: AutoApprovers,
    /// User login (and, for `name@` members, the bare name) -> groups listing it.
    pub(crate) groups_of_user: BTreeMap<String, Vec<String>>,
}

const KNOWN_TOP: &[&str] = &[
    "acls",
    "grants",
    "groups",
    "hosts",
    "tagOwners",
    "tests",
    "autoApprovers",
    "ssh",
    "sshTests",
    "nodeAttrs",
    "postures",
    "defaultSrcPosture",
    "ipsets",
    "derpMap",
    "disableIPv4",
    "OneCGNATRoute",
    "randomizeClientPort",
];

impl Policy {
    /// The policy that allows everything: what a tailnet without a policy gets.
    pub fn allow_all() -> Self {
        Policy {
            groups: BTreeMap::new(),
            tag_owners: BTreeMap::new(),
            hosts: BTreeMap::new(),
            rules: Vec::new(),
            has_rules: false,
            tests: Vec::new(),
            auto_approvers: AutoApprovers::default(),
            groups_of_user: BTreeMap::new(),
        }
    }

    /// Parses and validates policy text (HuJSON). Errors carry line and column.
    pub fn parse(text: &str) -> Result<Policy, PolicyError> {
        let root = hujson::parse(text)?;
        let top = as_object(&root, "the policy")?;
        for (k, _) in top {
            if !KNOWN_TOP.contains(&k.name.as_str()) {
                return Err(PolicyError::new(
                    k.pos,
                    format!("unknown policy section {:?}", k.name),
                ));
            }
        }
        let get = |name: &str| top.iter().find(|(k, _)| k.name == name).map(|(_, v)| v);

        let mut p = Policy::allow_all();
        // Pass 1: definitions (groups, hosts, tagOwners), so references can be checked.
        if let Some(v) = get("groups") {
            p.groups = parse_groups(v)?;
        }
        for (g, members) in &p.groups {
            for m in members {
                let mut keys = vec![m.clone()];
                if let Some(bare) = m.strip_suffix('@') {
                    keys.push(bare.to_string());
                }
                for k in keys {
                    let e = p.groups_of_user.entry(k).or_default();
                    if !e.contains(g) {
                        e.push(g.clone());
                    }
                }
            }
        }
        if let Some(v) = get("hosts") {
            p.hosts = parse_hosts(v)?;
        }
        if let Some(v) = get("tagOwners") {
            let members = as_object(v, "tagOwners")?;
            for (k, v) in members {
                check_tag_name(&k.name, k.pos)?;
                let owners = as_str_array(v, "tag owners")?
                    .into_iter()
                    .map(|(s, pos)| p.parse_owner(&s, pos, true))
                    .collect::<Result<Vec<_>, _>>()?;
                p.tag_owners.insert(k.name.clone(), owners);
            }
            // Tag owners that are tags must themselves be defined.
            for (k, _) in members {
                let owners = as_str_array(get_member(members, &k.name).expect("present"), "")?;
                for (s, pos) in owners {
                    if s.starts_with("tag:") && !p.tag_owners.contains_key(&s) {
                        return Err(PolicyError::new(
                            pos,
                            format!("tag {s:?} is not defined in tagOwners"),
                        ));
                    }
                }
            }
        }
        // Pass 2: rules.
        if let Some(v) = get("acls") {
            p.has_rules = true;
            for item in as_array(v, "acls")? {
                p.parse_acl(item)?;
            }
        }
        if let Some(v) = get("grants") {
            p.has_rules = true;
            for item in as_array(v, "grants")? {
                p.parse_grant(item)?;
            }
        }
        if let Some(v) = get("autoApprovers") {
            p.parse_auto_approvers(v)?;
        }
        if let Some(v) = get("tests") {
            for (i, item) in as_array(v, "tests")?.iter().enumerate() {
                let t = p.parse_test(i, item)?;
                p.tests.push(t);
            }
        }
        for section in ["ssh", "sshTests", "nodeAttrs"] {
            if let Some(v) = get(section) {
                as_array(v, section)?;
            }
        }
        Ok(p)
    }

    /// The normalized rules (ACL entries split per destination, then grants).
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// True unless the policy has neither `acls` nor `grants` (then all traffic is allowed).
    pub fn has_rules(&self) -> bool {
        self.has_rules
    }

    /// The policy's `tests`.
    pub fn tests(&self) -> &[PolicyTest] {
        &self.tests
    }

    /// The `autoApprovers` section.
    pub fn auto_approvers(&self) -> &AutoApprovers {
        &self.auto_approvers
    }

    /// Members (user logins) of a group defined in `groups`.
    pub fn group_members(&self, group: &str) -> Option<&[String]> {
        self.groups.get(group).map(Vec::as_slice)
    }

    /// Tags defined in `tagOwners`.
    pub fn defined_tags(&self) -> impl Iterator<Item = &str> {
        self.tag_owners.keys().map(String::as_str)
    }

    fn parse_owner(&self, s: &str, pos: Pos, for_tags: bool) -> Result<Owner, PolicyError> {
        if let Some(g) = s.strip_prefix("group:") {
            if g.is_empty() || !self.groups.contains_key(s) {
                return Err(PolicyError::new(
                    pos,
                    format!("group {s:?} is not defined in groups"),
                ));
            }
            return Ok(Owner::Group(s.to_string()));
        }
        if s.starts_with("tag:") {
            check_tag_name(s, pos)?;
            if !for_tags && !self.tag_owners.contains_key(s) {
                return Err(PolicyError::new(
                    pos,
                    format!("tag {s:?} is not defined in tagOwners"),
                ));
            }
            return Ok(Owner::Tag(s.to_string()));
        }
        match s {
            "autogroup:member" => return Ok(Owner::Member),
            "autogroup:tagged" if !for_tags => return Ok(Owner::Tagged),
            _ => {}
        }
        if s.contains('@') && !s.contains(':') {
            return Ok(Owner::User(s.to_string()));
        }
        Err(PolicyError::new(
            pos,
            format!("{s:?} is not a valid owner (expected a user login, group:, tag: or autogroup:member)"),
        ))
    }

    fn parse_alias(&self, s: &str, pos: Pos, side: Side) -> Result<Alias, PolicyError> {
        let bad = |reason: String| PolicyError::new(pos, reason);
        if s == "*" {
            return Ok(Alias::Wildcard);
        }
        if let Some(net) = parse_ip_or_cidr(s) {
            return Ok(Alias::Prefix(net));
        }
        if s.starts_with("autogroup:") {
            let Some(ag) = AutoGroup::parse(s) else {
                return Err(bad(format!("unknown or unsupported autogroup {s:?}")));
            };
            let ok = match side {
                Side::Src => matches!(
                    ag,
                    AutoGroup::Member | AutoGroup::Tagged | AutoGroup::DangerAll
                ),
                Side::Dst => matches!(
                    ag,
                    AutoGroup::Member
                        | AutoGroup::Tagged
                        | AutoGroup::SelfDevices
                        | AutoGroup::Internet
                ),
                Side::TestSrc => matches!(ag, AutoGroup::Member | AutoGroup::Tagged),
            };
            if !ok {
                return Err(bad(format!("{s} cannot be used as a {}", side.name())));
            }
            return Ok(Alias::AutoGroup(ag));
        }
        if s.starts_with("group:") {
            if !self.groups.contains_key(s) {
                return Err(bad(format!("group {s:?} is not defined in groups")));
            }
            return Ok(Alias::Group(s.to_string()));
        }
        if s.starts_with("tag:") {
            if !self.tag_owners.contains_key(s) {
                return Err(bad(format!("tag {s:?} is not defined in tagOwners")));
            }
            return Ok(Alias::Tag(s.to_string()));
        }
        if s.contains('@') {
            if s.contains(':') || s.starts_with('@') {
                return Err(bad(format!("{s:?} is not a valid user login")));
            }
            return Ok(Alias::User(s.to_string()));
        }
        if s.contains(':') {
            return Err(bad(format!("{s:?} is not a valid selector")));
        }
        match self.hosts.get(s) {
            Some(net) => Ok(Alias::Host(s.to_string(), *net)),
            None => Err(bad(format!("host {s:?} is not defined in hosts"))),
        }
    }

    fn parse_acl(&mut self, v: &Value) -> Result<(), PolicyError> {
        let m = as_object(v, "an ACL entry")?;
        allow_keys(m, &["action", "src", "dst", "proto", "srcPosture"])?;
        let action = need(m, "action", v.pos)?;
        match &action.kind {
            Kind::String(a) if a == "accept" => {}
            Kind::String(a) => {
                return Err(PolicyError::new(
                    action.pos,
                    format!("action {a:?} is not supported (only \"accept\")"),
                ))
            }
            _ => return Err(PolicyError::new(action.pos, "action must be a string")),
        }
        let protos: Protos = match get_member(m, "proto") {
            None => None,
            Some(pv) => parse_proto(pv)?,
        };
        let src = self.parse_alias_list(need(m, "src", v.pos)?, Side::Src)?;
        let dsts = as_str_array(need(m, "dst", v.pos)?, "dst")?;
        let mut parsed = Vec::new();
        for (d, pos) in dsts {
            let (alias_text, ports_text) = split_host_port(&d).ok_or_else(|| {
                PolicyError::new(pos, format!("dst {d:?} must be of the form host:ports"))
            })?;
            let alias = self.parse_alias(alias_text, pos, Side::Dst)?;
            check_not_all_ips(&alias, &d, pos)?;
            let ports = parse_ports(ports_text)
                .map_err(|r| PolicyError::new(pos, format!("dst {d:?}: {r}")))?;
            parsed.push((Target { alias, pos }, ports));
        }
        if parsed
            .iter()
            .any(|(t, _)| t.alias == Alias::AutoGroup(AutoGroup::SelfDevices))
        {
            check_self_sources(&src, true, v.pos)?;
        }
        // autogroup:self destinations go after the others when the entry mixes both.
        let (selfs, others): (Vec<_>, Vec<_>) = parsed
            .into_iter()
            .partition(|(t, _)| t.alias == Alias::AutoGroup(AutoGroup::SelfDevices));
        for (target, ports) in others.into_iter().chain(selfs) {
            self.rules.push(Rule {
                src: src.clone(),
                dst: vec![target],
                ip: vec![(protos.clone(), ports)],
                app: None,
                pos: v.pos,
            });
        }
        Ok(())
    }

    fn parse_grant(&mut self, v: &Value) -> Result<(), PolicyError> {
        let m = as_object(v, "a grant")?;
        allow_keys(m, &["src", "dst", "ip", "app", "via", "srcPosture"])?;
        let src = self.parse_alias_list(need(m, "src", v.pos)?, Side::Src)?;
        let dst_list = as_str_array(need(m, "dst", v.pos)?, "dst")?;
        let mut dst = Vec::new();
        for (d, pos) in dst_list {
            let alias = self.parse_alias(&d, pos, Side::Dst)?;
            check_not_all_ips(&alias, &d, pos)?;
            dst.push(Target { alias, pos });
        }
        if dst
            .iter()
            .any(|t| t.alias == Alias::AutoGroup(AutoGroup::SelfDevices))
        {
            check_self_sources(&src, false, v.pos)?;
        }
        if let Some(via) = get_member(m, "via") {
            return Err(PolicyError::new(
                via.pos,
                "grants with \"via\" are not supported",
            ));
        }
        let mut groups: Vec<(Protos, Vec<Ports>)> = Vec::new();
        let app = match get_member(m, "app") {
            Some(a) => parse_app(a)?,
            None => None,
        };
        let has_app = app.is_some();
        match get_member(m, "ip") {
            None => {
                if !has_app {
                    return Err(PolicyError::new(v.pos, "a grant needs \"ip\" or \"app\""));
                }
            }
            Some(ipv) => {
                let entries = as_str_array(ipv, "ip")?;
                if entries.is_empty() && !has_app {
                    return Err(PolicyError::new(
                        ipv.pos,
                        "ip and app can not both be empty",
                    ));
                }
                for (s, pos) in entries {
                    let (protos, ports) =
                        parse_grant_ip(&s).map_err(|r| PolicyError::new(pos, r))?;
                    match groups.iter_mut().find(|(p, _)| *p == protos) {
                        Some((_, ps)) => ps.extend(ports),
                        None => groups.push((protos, ports)),
                    }
                }
            }
        }
        if !groups.is_empty() || app.is_some() {
            self.rules.push(Rule {
                src,
                dst,
                ip: groups,
                app,
                pos: v.pos,
            });
        }
        Ok(())
    }

    fn parse_alias_list(&self, v: &Value, side: Side) -> Result<Vec<Alias>, PolicyError> {
        as_str_array(v, side.name())?
            .into_iter()
            .map(|(s, pos)| self.parse_alias(&s, pos, side))
            .collect()
    }

    fn parse_auto_approvers(&mut self, v: &Value) -> Result<(), PolicyError> {
        let m = as_object(v, "autoApprovers")?;
        allow_keys(m, &["routes", "exitNode"])?;
        if let Some(r) = get_member(m, "routes") {
            for (k, owners) in as_object(r, "autoApprovers.routes")? {
                let net = parse_ip_or_cidr(&k.name).ok_or_else(|| {
                    PolicyError::new(k.pos, format!("{:?} is not a route prefix", k.name))
                })?;
                let owners = as_str_array(owners, "route approvers")?
                    .into_iter()
                    .map(|(s, pos)| self.parse_owner(&s, pos, false))
                    .collect::<Result<Vec<_>, _>>()?;
                self.auto_approvers.routes.push((net, owners));
            }
        }
        if let Some(e) = get_member(m, "exitNode") {
            self.auto_approvers.exit_node = as_str_array(e, "exitNode approvers")?
                .into_iter()
                .map(|(s, pos)| self.parse_owner(&s, pos, false))
                .collect::<Result<Vec<_>, _>>()?;
        }
        Ok(())
    }

    fn parse_test(&self, index: usize, v: &Value) -> Result<PolicyTest, PolicyError> {
        let m = as_object(v, "a test")?;
        allow_keys(m, &["src", "proto", "accept", "deny", "srcPostureAttrs"])?;
        let srcv = need(m, "src", v.pos)?;
        let Kind::String(src_text) = &srcv.kind else {
            return Err(PolicyError::new(srcv.pos, "test src must be a string"));
        };
        let src = self.parse_alias(src_text, srcv.pos, Side::TestSrc)?;
        if matches!(src, Alias::Wildcard) {
            return Err(PolicyError::new(
                srcv.pos,
                "test src must name one user, tag, host or IP",
            ));
        }
        let proto = match get_member(m, "proto") {
            None => None,
            Some(pv) => match parse_proto(pv)? {
                Some(p) if p.len() == 1 => Some(p[0]),
                _ => {
                    return Err(PolicyError::new(
                        pv.pos,
                        "test proto must name one protocol",
                    ))
                }
            },
        };
        let mut lists = [Vec::new(), Vec::new()];
        for (i, key) in ["accept", "deny"].into_iter().enumerate() {
            let Some(lv) = get_member(m, key) else {
                continue;
            };
            for (d, pos) in as_str_array(lv, key)? {
                let (a, p) = split_host_port(&d).ok_or_else(|| {
                    PolicyError::new(pos, format!("{d:?} must be of the form host:port"))
                })?;
                let alias = self.parse_alias(a, pos, Side::Dst)?;
                if matches!(alias, Alias::Wildcard | Alias::AutoGroup(_)) {
                    return Err(PolicyError::new(
                        pos,
                        format!("{d:?}: test destinations name one host"),
                    ));
                }
                let port: u16 = p.parse().map_err(|_| {
                    PolicyError::new(pos, format!("{d:?}: test port must be one number"))
                })?;
                lists[i].push((d.clone(), alias, port));
            }
        }
        let [accept, deny] = lists;
        if accept.is_empty() && deny.is_empty() {
            return Err(PolicyError::new(
                v.pos,
                "a test needs \"accept\" or \"deny\" destinations",
            ));
        }
        Ok(PolicyTest {
            index,
            pos: v.pos,
            src,
            src_text: src_text.clone(),
            proto,
            accept,
            deny,
        })
    }
}

#[derive(Clone, Copy)]
enum Side {
    Src,
    Dst,
    TestSrc,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Src | Side::TestSrc => "source",
            Side::Dst => "destination",
        }
    }
}

/// `autogroup:self` destinations only combine with sources that name users.
fn check_self_sources(src: &[Alias], wildcard_ok: bool, pos: Pos) -> Result<(), PolicyError> {
    let ok = src.iter().all(|a| {
        (wildcard_ok && *a == Alias::Wildcard)
            || matches!(
                a,
                Alias::User(_) | Alias::Group(_) | Alias::AutoGroup(AutoGroup::Member)
            )
    });
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            pos,
            "autogroup:self can only be used with users, groups, or supported autogroups",
        ))
    }
}

/// A grant's `"app"`: capability name -> array of JSON objects. `None` when empty.
fn parse_app(v: &Value) -> Result<Option<weft_tailcfg::CapMap>, PolicyError> {
    let m = as_object(v, "app")?;
    let mut caps = weft_tailcfg::CapMap::new();
    for (k, vals) in m {
        let name = k.name.as_str();
        let valid = !name.is_empty()
            && name.contains('/')
            && !name.starts_with('/')
            && !name.chars().any(|c| c.is_whitespace() || c.is_control());
        if !valid {
            return Err(PolicyError::new(
                k.pos,
                format!("{name:?} is not a capability name (like \"example.com/cap/name\")"),
            ));
        }
        let Kind::Array(items) = &vals.kind else {
            return Err(PolicyError::new(
                vals.pos,
                format!(
                    "capability {name:?}: expected an array of objects, found {}",
                    vals.kind_name()
                ),
            ));
        };
        let mut out = Vec::with_capacity(items.len());
        for it in items {
            if !matches!(it.kind, Kind::Object(_)) {
                return Err(PolicyError::new(
                    it.pos,
                    format!(
                        "capability {name:?}: expected an object, found {}",
                        it.kind_name()
                    ),
                ));
            }
            out.push(it.to_json());
        }
        if caps.insert(name.to_owned(), Some(out)).is_some() {
            return Err(PolicyError::new(
                k.pos,
                format!("capability {name:?} appears twice"),
            ));
        }
    }
    Ok((!caps.is_empty()).then_some(caps))
}

fn check_not_all_ips(alias: &Alias, text: &str, pos: Pos) -> Result<(), PolicyError> {
    match alias {
        Alias::Prefix(n) | Alias::Host(_, n) if n.prefix_len() == 0 => Err(PolicyError::new(
            pos,
            format!("dst {text:?}: to allow all IP addresses, use \"*\" or \"autogroup:internet\""),
        )),
        _ => Ok(()),
    }
}

fn parse_groups(v: &Value) -> Result<BTreeMap<String, Vec<String>>, PolicyError> {
    let mut out = BTreeMap::new();
    for (k, members) in as_object(v, "groups")? {
        match k.name.strip_prefix("group:") {
            Some(n) if !n.is_empty() && !n.contains(':') => {}
            _ => {
                return Err(PolicyError::new(
                    k.pos,
                    format!("group name {:?} must start with \"group:\"", k.name),
                ))
            }
        }
        let mut list = Vec::new();
        for (s, pos) in as_str_array(members, "group members")? {
            if !s.contains('@') || s.contains(':') {
                return Err(PolicyError::new(
                    pos,
                    format!("group member {s:?} must be a user login (groups cannot nest)"),
                ));
            }
            list.push(s);
        }
        out.insert(k.name.clone(), list);
    }
    Ok(out)
}

fn parse_hosts(v: &Value) -> Result<BTreeMap<String, IpNet>, PolicyError> {
    let mut out = BTreeMap::new();
    for (k, val) in as_object(v, "hosts")? {
        let valid_name = !k.name.is_empty()
            && k.name != "*"
            && !k.name.contains([':', '@', '/'])
            && k.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && parse_ip_or_cidr(&k.name).is_none();
        if !valid_name {
            return Err(PolicyError::new(
                k.pos,
                format!("{:?} is not a valid host name", k.name),
            ));
        }
        let Kind::String(s) = &val.kind else {
            return Err(PolicyError::new(
                val.pos,
                "a host must be an IP address or CIDR string",
            ));
        };
        let net = parse_ip_or_cidr(s).ok_or_else(|| {
            PolicyError::new(val.pos, format!("{s:?} is not an IP address or CIDR"))
        })?;
        out.insert(k.name.clone(), net);
    }
    Ok(out)
}

fn check_tag_name(s: &str, pos: Pos) -> Result<(), PolicyError> {
    let ok = s.strip_prefix("tag:").is_some_and(|n| {
        !n.is_empty()
            && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
            && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
    });
    if ok {
        Ok(())
    } else {
        Err(PolicyError::new(
            pos,
            format!("{s:?} is not a valid tag (tag:name, letters, digits and dashes)"),
        ))
    }
}

/// Parses `1.2.3.4`, `1.2.3.0/24`, `fd7a::1`, `fd7a::/48`. A CIDR with host bits set is an error
/// (returns None), as in Tailscale.
pub(crate) fn parse_ip_or_cidr(s: &str) -> Option<IpNet> {
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Some(IpNet::from(ip));
    }
    let net: IpNet = s.parse().ok()?;
    (net.trunc() == net).then_some(net)
}

/// Splits `alias:ports`, with `[v6]:ports` or a bare IPv6 whose last colon starts the ports.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once("]:")?;
        return Some((h, p));
    }
    let i = s.rfind(':')?;
    let (h, p) = (&s[..i], &s[i + 1..]);
    if h.is_empty() || p.is_empty() {
        return None;
    }
    Some((h, p))
}

fn parse_port(s: &str) -> Result<u16, String> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || (s.len() > 1 && s.starts_with('0'))
    {
        return Err(format!("invalid port {s:?}"));
    }
    s.parse::<u16>()
        .map_err(|_| format!("port {s:?} out of range"))
}

/// Parses `*`, `22`, `80,443`, `1000-2000` into port ranges.
pub(crate) fn parse_ports(s: &str) -> Result<Vec<Ports>, String> {
    if s == "*" {
        return Ok(vec![Ports::ANY]);
    }
    let mut out = Vec::new();
    for part in s.split(',') {
        let r = match part.split_once('-') {
            Some((a, b)) => {
                let (first, last) = (parse_port(a)?, parse_port(b)?);
                if first == 0 {
                    return Err(format!(
                        "port range {part:?}: first port must be >0, or use '*' for wildcard"
                    ));
                }
                if first > last {
                    return Err(format!("port range {part:?} is reversed"));
                }
                Ports { first, last }
            }
            None => {
                let p = parse_port(part)?;
                if p == 0 {
                    return Err(format!(
                        "port range {part:?}: first port must be >0, or use '*' for wildcard"
                    ));
                }
                Ports { first: p, last: p }
            }
        };
        out.push(r);
    }
    Ok(out)
}

fn proto_number(name: &str) -> Result<u8, String> {
    let lower = name.to_ascii_lowercase();
    Ok(match lower.as_str() {
        "icmp" => 1,
        "igmp" => 2,
        "ipv4" | "ip-in-ip" => 4,
        "tcp" => 6,
        "egp" => 8,
        "igp" => 9,
        "udp" => 17,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "ipv6-icmp" => 58,
        "sctp" => 132,
        "fc" => 133,
        _ => {
            if lower.is_empty()
                || lower.starts_with('0')
                || !lower.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(format!("unknown protocol {name:?}"));
            }
            lower
                .parse::<u8>()
                .map_err(|_| format!("protocol number {name:?} out of range 1-255"))?
        }
    })
}

fn parse_proto(v: &Value) -> Result<Protos, PolicyError> {
    let Kind::String(s) = &v.kind else {
        return Err(PolicyError::new(v.pos, "proto must be a string"));
    };
    if s.is_empty() {
        return Ok(None);
    }
    proto_number(s)
        .map(|n| Some(vec![n]))
        .map_err(|r| PolicyError::new(v.pos, r))
}

/// Parses a grant `ip` entry: `*`, `22`, `80-90`, `tcp:443`, `udp:*`, `icmp:*`.
fn parse_grant_ip(s: &str) -> Result<(Protos, Vec<Ports>), String> {
    if s == "*" {
        return Ok((None, vec![Ports::ANY]));
    }
    match s.split_once(':') {
        None => Ok((None, parse_ports(s)?)),
        Some((proto, ports)) => Ok((Some(vec![proto_number(proto)?]), parse_ports(ports)?)),
    }
}

fn as_object<'a>(v: &'a Value, what: &str) -> Result<&'a [(Key, Value)], PolicyError> {
    match &v.kind {
        Kind::Object(m) => Ok(m),
        _ => Err(PolicyError::new(
            v.pos,
            format!("{what} must be an object, found {}", v.kind_name()),
        )),
    }
}

fn as_array<'a>(v: &'a Value, what: &str) -> Result<&'a [Value], PolicyError> {
    match &v.kind {
        Kind::Array(a) => Ok(a),
        _ => Err(PolicyError::new(
            v.pos,
            format!("{what} must be an array, found {}", v.kind_name()),
        )),
    }
}

fn as_str_array(v: &Value, what: &str) -> Result<Vec<(String, Pos)>, PolicyError> {
    as_array(v, what)?
        .iter()
        .map(|item| match &item.kind {
            Kind::String(s) => Ok((s.clone(), item.pos)),
            _ => Err(PolicyError::new(
                item.pos,
                format!("{what} entries must be strings, found {}", item.kind_name()),
            )),
        })
        .collect()
}

fn get_member<'a>(m: &'a [(Key, Value)], name: &str) -> Option<&'a Value> {
    m.iter().find(|(k, _)| k.name == name).map(|(_, v)| v)
}

fn need<'a>(m: &'a [(Key, Value)], name: &str, pos: Pos) -> Result<&'a Value, PolicyError> {
    get_member(m, name).ok_or_else(|| PolicyError::new(pos, format!("missing field {name:?}")))
}

fn allow_keys(m: &[(Key, Value)], allowed: &[&str]) -> Result<(), PolicyError> {
    for (k, _) in m {
        if !allowed.contains(&k.name.as_str()) {
            return Err(PolicyError::new(
                k.pos,
                format!("unknown field {:?}", k.name),
            ));
        }
    }
    Ok(())
}
