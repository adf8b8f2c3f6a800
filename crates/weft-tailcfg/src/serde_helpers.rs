//! Decoding helpers for Go `encoding/json` quirks (`null` for nil slices and maps).

use std::net::SocketAddr;

use serde::{Deserialize, Deserializer};

/// Decodes `null` (or absence, with `#[serde(default)]`) as `T::default()`.
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Decodes a list of `ip:port` strings, dropping entries that do not parse
/// (for example IPv6 link-local endpoints with a zone), `null` as empty.
pub(crate) fn lenient_addrports<'de, D>(d: D) -> Result<Vec<SocketAddr>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw: Option<Vec<String>> = Option::deserialize(d)?;
    Ok(raw
        .unwrap_or_default()
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect())
}

/// Like [`lenient_addrports`] but keeps `null` distinct from `[]`.
pub(crate) fn lenient_opt_addrports<'de, D>(d: D) -> Result<Option<Vec<SocketAddr>>, D::Error>
where
    D: Deserializer<'de>,
{
    let raw: Option<Vec<String>> = Option::deserialize(d)?;
    Ok(raw.map(|v| v.iter().filter_map(|s| s.parse().ok()).collect()))
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

pub(crate) fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

pub(crate) fn is_zero_i32(v: &i32) -> bool {
    *v == 0
}

pub(crate) fn is_zero_f64(v: &f64) -> bool {
    *v == 0.0
}
