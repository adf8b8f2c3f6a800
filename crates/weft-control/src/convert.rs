//! Conversions between store rows, mapper state and wire types.

use base64::Engine as _;
use time::OffsetDateTime;
use weft_mapper::{NodeState, UserInfo};
use weft_tailcfg::{Hostinfo, Login, Time, User};

/// `OffsetDateTime` → wire time.
pub fn to_time(t: OffsetDateTime) -> Time {
    Time::from_unix(t.unix_timestamp(), t.nanosecond())
}

/// Wire time → `OffsetDateTime` (clamped to the representable range).
pub fn from_time(t: Time) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(t.unix_nanos()).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Hostinfo JSON as stored → wire Hostinfo.
pub fn hostinfo_of(v: &serde_json::Value) -> Hostinfo {
    match v {
        serde_json::Value::Object(m) => Hostinfo(m.clone()),
        _ => Hostinfo::new(),
    }
}

/// The home DERP region a Hostinfo reports.
pub fn home_derp_of(h: &Hostinfo) -> i32 {
    h.net_info().map(|n| n.preferred_derp).unwrap_or(0)
}

/// Store node → mapper node. `online` and `cap` live only in memory.
pub fn node_state(n: &weft_store::Node, online: bool, cap: i64) -> NodeState {
    let hostinfo = hostinfo_of(&n.hostinfo);
    NodeState {
        id: n.id.0,
        user_id: n.user_id.0,
        machine_key: n.machine_key,
        node_key: n.node_key,
        disco_key: n.disco_key,
        given_name: n.given_name.clone(),
        ipv4: Some(n.ipv4),
        ipv6: Some(n.ipv6),
        home_derp: home_derp_of(&hostinfo),
        hostinfo,
        endpoints: n.endpoints.clone(),
        tags: n.tags.clone(),
        approved_routes: n.approved_routes.clone(),
        created: to_time(n.created_at),
        key_expiry: if n.key_expiry_disabled {
            None
        } else {
            n.expiry.map(to_time)
        },
        online,
        last_seen: n.last_seen.map(to_time),
        machine_authorized: n.approved,
        cap,
        key_signature: n
            .key_signature
            .as_ref()
            .map(|s| base64::engine::general_purpose::STANDARD.encode(s)),
    }
}

/// Store user → mapper user.
pub fn user_info(u: &weft_store::User) -> UserInfo {
    UserInfo {
        id: u.id.0,
        login_name: login_name(u),
        display_name: if u.display_name.is_empty() {
            u.name.clone()
        } else {
            u.display_name.clone()
        },
        profile_pic_url: u.profile_pic_url.clone(),
    }
}

fn login_name(u: &weft_store::User) -> String {
    if u.email.is_empty() {
        u.name.clone()
    } else {
        u.email.clone()
    }
}

/// Store user → `RegisterResponse.User` and `.Login`.
pub fn user_and_login(u: &weft_store::User) -> (User, Login) {
    let info = user_info(u);
    (
        User {
            id: u.id.0,
            display_name: info.display_name.clone(),
            profile_pic_url: u.profile_pic_url.clone(),
            created: to_time(u.created_at),
        },
        Login {
            id: u.id.0,
            provider: u.provider.clone(),
            login_name: info.login_name,
            display_name: info.display_name,
            profile_pic_url: u.profile_pic_url.clone(),
        },
    )
}

/// The exit-node pair, `0.0.0.0/0` and `::/0` (approved and advertised together).
pub fn exit_routes() -> [ipnet::IpNet; 2] {
    [
        ipnet::IpNet::V4(ipnet::Ipv4Net::default()),
        ipnet::IpNet::V6(ipnet::Ipv6Net::default()),
    ]
}
