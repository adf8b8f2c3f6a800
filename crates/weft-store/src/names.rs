//! Pure helpers for names and ids: MagicDNS labels and random session ids.

/// Longest DNS label.
pub const MAX_LABEL_LEN: usize = 63;

/// Turns a reported hostname into a DNS label: lowercase ASCII letters, digits and
/// `-`, no leading/trailing `-`, at most 63 bytes; `"node"` if nothing is left.
///
/// Only the first dot-separated part of the hostname is used (`web.lan` -> `web`).
pub fn dns_label(hostname: &str) -> String {
    let first = hostname.split('.').next().unwrap_or("");
    let mut out = String::with_capacity(first.len());
    for c in first.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let trimmed = out.trim_matches('-');
    let mut label: String = trimmed.chars().take(MAX_LABEL_LEN).collect();
    while label.ends_with('-') {
        label.pop();
    }
    if label.is_empty() {
        "node".to_owned()
    } else {
        label
    }
}

/// The `n`-th candidate for a label: `base` for 0, else `base-n`, shortening `base`
/// so the result stays within 63 bytes.
pub fn numbered_label(base: &str, n: u32) -> String {
    if n == 0 {
        return base.to_owned();
    }
    let suffix = format!("-{n}");
    let keep = MAX_LABEL_LEN.saturating_sub(suffix.len()).min(base.len());
    let mut head = base[..keep].to_owned();
    while head.ends_with('-') {
        head.pop();
    }
    format!("{head}{suffix}")
}

/// A fresh random id for an interactive registration session (32 lowercase hex digits).
pub fn random_auth_id() -> String {
    let mut b = [0u8; 16];
    getrandom::getrandom(&mut b).expect("the OS random source is available");
    hex::encode(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_label_lowercases_and_replaces_invalid_characters() {
        assert_eq!(dns_label("My_Laptop (2)"), "my-laptop-2");
        assert_eq!(dns_label("web.lan"), "web");
        assert_eq!(dns_label("--x--"), "x");
        assert_eq!(dns_label(""), "node");
        assert_eq!(dns_label("ünï"), "n");
        assert_eq!(dns_label(&"a".repeat(100)).len(), 63);
    }

    #[test]
    fn numbered_label_keeps_within_63_bytes() {
        assert_eq!(numbered_label("web", 0), "web");
        assert_eq!(numbered_label("web", 2), "web-2");
        let long = "a".repeat(63);
        let l = numbered_label(&long, 12);
        assert_eq!(l.len(), 63);
        assert!(l.ends_with("-12"));
    }

    #[test]
    fn random_auth_ids_differ() {
        let a = random_auth_id();
        assert_eq!(a.len(), 32);
        assert_ne!(a, random_auth_id());
    }
}
