//! disco (being written).
