//! NATS transport (being written).
