//! derp (being written).
