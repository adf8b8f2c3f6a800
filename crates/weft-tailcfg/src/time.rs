//! Go `time.Time` as it appears in JSON: RFC 3339 with up to nanoseconds, zero time
//! `0001-01-01T00:00:00Z`.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Seconds between 0001-01-01T00:00:00Z (Go's zero time) and the Unix epoch.
const GO_ZERO_UNIX: i64 = -62_135_596_800;

/// A UTC instant with nanosecond precision, encoded like Go's `time.Time`.
///
/// [`Time::ZERO`] is Go's zero value (`0001-01-01T00:00:00Z`), which Go code treats as
/// "unset"; it is also what `null` decodes to.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Time {
    unix_secs: i64,
    nanos: u32,
}

impl Default for Time {
    fn default() -> Self {
        Self::ZERO
    }
}

/// Error parsing an RFC 3339 time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid RFC 3339 time {0:?}")]
pub struct TimeParseError(pub String);

impl Time {
    /// Go's zero time, `0001-01-01T00:00:00Z`.
    pub const ZERO: Time = Time {
        unix_secs: GO_ZERO_UNIX,
        nanos: 0,
    };
    /// The Unix epoch.
    pub const UNIX_EPOCH: Time = Time {
        unix_secs: 0,
        nanos: 0,
    };

    /// Builds a time from Unix seconds and nanoseconds (nanos clamped below 1e9).
    pub const fn from_unix(secs: i64, nanos: u32) -> Time {
        let nanos = if nanos >= 1_000_000_000 {
            999_999_999
        } else {
            nanos
        };
        Time {
            unix_secs: secs,
            nanos,
        }
    }

    /// Seconds since the Unix epoch (negative before 1970).
    pub const fn unix_secs(&self) -> i64 {
        self.unix_secs
    }

    /// Sub-second nanoseconds.
    pub const fn subsec_nanos(&self) -> u32 {
        self.nanos
    }

    /// Whether this is Go's zero time.
    pub fn is_zero(&self) -> bool {
        *self == Self::ZERO
    }

    /// Converts a [`SystemTime`].
    pub fn from_system(t: SystemTime) -> Time {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Time::from_unix(d.as_secs() as i64, d.subsec_nanos()),
            Err(e) => {
                let d = e.duration();
                let mut secs = -(d.as_secs() as i64);
                let mut nanos = d.subsec_nanos();
                if nanos > 0 {
                    secs -= 1;
                    nanos = 1_000_000_000 - nanos;
                }
                Time::from_unix(secs, nanos)
            }
        }
    }

    /// Converts to a [`SystemTime`].
    pub fn to_system(self) -> SystemTime {
        if self.unix_secs >= 0 {
            UNIX_EPOCH + Duration::new(self.unix_secs as u64, self.nanos)
        } else {
            UNIX_EPOCH - Duration::from_secs(self.unix_secs.unsigned_abs())
                + Duration::from_nanos(self.nanos as u64)
        }
    }

    /// Unix time in nanoseconds (saturating).
    pub fn unix_nanos(&self) -> i128 {
        self.unix_secs as i128 * 1_000_000_000 + self.nanos as i128
    }

    /// Whether this time is strictly before `other`.
    pub fn before(&self, other: Time) -> bool {
        *self < other
    }

    fn from_nanos_i128(n: i128) -> Time {
        let secs = n.div_euclid(1_000_000_000);
        let nanos = n.rem_euclid(1_000_000_000) as u32;
        let secs = secs.clamp(i64::MIN as i128, i64::MAX as i128) as i64;
        Time {
            unix_secs: secs,
            nanos,
        }
    }

    /// Formats like Go's `time.RFC3339Nano` in UTC (trailing zeros of the fraction trimmed).
    pub fn to_rfc3339(&self) -> String {
        let days = self.unix_secs.div_euclid(86_400);
        let sod = self.unix_secs.rem_euclid(86_400);
        let (y, m, d) = civil_from_days(days);
        let (hh, mm, ss) = (sod / 3600, (sod / 60) % 60, sod % 60);
        let mut s = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
        if self.nanos != 0 {
            let frac = format!("{:09}", self.nanos);
            s.push('.');
            s.push_str(frac.trim_end_matches('0'));
        }
        s.push('Z');
        s
    }

    /// Parses RFC 3339 (`Z` or `±hh:mm` offsets, optional fraction of up to 9 digits).
    pub fn parse_rfc3339(s: &str) -> Result<Time, TimeParseError> {
        let err = || TimeParseError(s.chars().take(64).collect());
        let b = s.as_bytes();
        if b.len() < 20 {
            return Err(err());
        }
        let num = |r: std::ops::Range<usize>| -> Result<i64, TimeParseError> {
            let part = s.get(r).ok_or_else(err)?;
            if !part.bytes().all(|c| c.is_ascii_digit()) {
                return Err(err());
            }
            part.parse::<i64>().map_err(|_| err())
        };
        if b[4] != b'-'
            || b[7] != b'-'
            || !(b[10] == b'T' || b[10] == b't' || b[10] == b' ')
            || b[13] != b':'
            || b[16] != b':'
        {
            return Err(err());
        }
        let (y, mo, d, h, mi, sec) = (
            num(0..4)?,
            num(5..7)?,
            num(8..10)?,
            num(11..13)?,
            num(14..16)?,
            num(17..19)?,
        );
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 60
        {
            return Err(err());
        }
        let mut i = 19;
        let mut nanos: u32 = 0;
        if b[i] == b'.' {
            i += 1;
            let start = i;
            while i < b.len() && b[i].is_ascii_digit() {
                i += 1;
            }
            let digits = &s[start..i];
            if digits.is_empty() || digits.len() > 9 {
                return Err(err());
            }
            let mut padded = digits.to_string();
            while padded.len() < 9 {
                padded.push('0');
            }
            nanos = padded.parse().map_err(|_| err())?;
        }
        let rest = &s[i..];
        let offset_secs: i64 = if rest == "Z" || rest == "z" {
            0
        } else if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && rest.as_bytes()[3] == b':'
        {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(err());
            }
            let o = oh * 3600 + om * 60;
            if rest.starts_with('-') {
                -o
            } else {
                o
            }
        } else {
            return Err(err());
        };
        let days = days_from_civil(y, mo, d);
        let secs = days * 86_400 + h * 3600 + mi * 60 + sec.min(59) - offset_secs;
        Ok(Time {
            unix_secs: secs,
            nanos,
        })
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 for a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl std::ops::Add<Duration> for Time {
    type Output = Time;
    fn add(self, d: Duration) -> Time {
        Time::from_nanos_i128(self.unix_nanos() + d.as_nanos() as i128)
    }
}

impl std::ops::Sub<Duration> for Time {
    type Output = Time;
    fn sub(self, d: Duration) -> Time {
        Time::from_nanos_i128(self.unix_nanos() - d.as_nanos() as i128)
    }
}

impl fmt::Display for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_rfc3339())
    }
}

impl fmt::Debug for Time {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Time({})", self.to_rfc3339())
    }
}

impl std::str::FromStr for Time {
    type Err = TimeParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Time::parse_rfc3339(s)
    }
}

impl Serialize for Time {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> Deserialize<'de> for Time {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s: Option<String> = Option::deserialize(d)?;
        match s {
            None => Ok(Time::ZERO),
            Some(s) => Time::parse_rfc3339(&s).map_err(serde::de::Error::custom),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_time_formats_like_go() {
        assert_eq!(Time::ZERO.to_rfc3339(), "0001-01-01T00:00:00Z");
        assert_eq!(
            Time::parse_rfc3339("0001-01-01T00:00:00Z").unwrap(),
            Time::ZERO
        );
    }

    #[test]
    fn logout_expiry_is_1970_plus_123s() {
        let t = Time::parse_rfc3339("1970-01-01T00:02:03Z").unwrap();
        assert_eq!(t.unix_secs(), 123);
    }

    #[test]
    fn nanos_are_trimmed_like_rfc3339nano() {
        let t = Time::from_unix(1_735_787_045, 123_456_000);
        assert_eq!(t.to_rfc3339(), "2025-01-02T03:04:05.123456Z");
        assert_eq!(
            Time::parse_rfc3339("2025-01-02T03:04:05.123456Z").unwrap(),
            t
        );
    }

    #[test]
    fn offsets_are_normalised_to_utc() {
        let t = Time::parse_rfc3339("2025-01-02T05:04:05+02:00").unwrap();
        assert_eq!(t.to_rfc3339(), "2025-01-02T03:04:05Z");
    }

    #[test]
    fn garbage_is_rejected() {
        for s in [
            "",
            "2025-13-01T00:00:00Z",
            "2025-01-01 00:00:00",
            "2025-02-30T00:00:00Z",
            "2025-01-01T00:00:00.Z",
        ] {
            assert!(Time::parse_rfc3339(s).is_err(), "{s}");
        }
    }

    #[test]
    fn null_decodes_to_zero() {
        let t: Time = serde_json::from_str("null").unwrap();
        assert!(t.is_zero());
    }

    proptest::proptest! {
        #[test]
        fn roundtrip(secs in -62_135_596_800i64..253_402_300_799i64, nanos in 0u32..1_000_000_000) {
            let t = Time::from_unix(secs, nanos);
            proptest::prop_assert_eq!(Time::parse_rfc3339(&t.to_rfc3339()).unwrap(), t);
        }

        #[test]
        fn system_time_roundtrip(secs in -1_000_000_000i64..4_000_000_000i64, nanos in 0u32..1_000_000_000) {
            let t = Time::from_unix(secs, nanos);
            proptest::prop_assert_eq!(Time::from_system(t.to_system()), t);
        }
    }
}
