//! Direct TCP transport (being written).
