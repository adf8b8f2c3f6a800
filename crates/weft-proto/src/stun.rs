//! stun (being written).
