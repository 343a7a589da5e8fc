//! The audit-log schema and its pure verification (being written).
