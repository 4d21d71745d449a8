//! Key ranges (being written).
