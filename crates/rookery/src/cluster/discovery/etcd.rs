//! etcd discovery back end (being written).
