//! SQL analysis: parsing, planning, routing and merging (being written).
