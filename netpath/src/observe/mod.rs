//! Seeing what the datapath does: `trace` (copies of redirected frames),
//! `monitor` (FDB events) and Prometheus `metrics`.

pub mod metrics;
pub mod monitor;
pub mod trace;
