//! The environment a run records in its `summary.json`: where and when it ran, with what.

/// The candle release runner is built against (kept in step with Cargo.toml).
pub const CANDLE_VERSION: &str = "0.11.1";

/// This host's name.
pub fn hostname() -> String {
    crate::fsio::lock::hostname()
}

/// Peak resident memory of this process (Linux's VmHWM), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = s
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// The current time as RFC 3339, to the second.
pub fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// What `summary.json` records of the build and the machine.
pub fn build_and_machine(backends: &crate::backend::Backends) -> serde_json::Value {
    serde_json::json!({
        "runner_version": env!("CARGO_PKG_VERSION"),
        "git_commit": env!("RUNNER_GIT_COMMIT"),
        "candle_version": CANDLE_VERSION,
        "cudnn": cfg!(feature = "cudnn"),
        // the opt-in GPU paths (`RUNNER_GPU_FUSED`), so timings with and without compare
        "gpu_fused": backends.fused_paths().iter().map(|g| g.name()).collect::<Vec<_>>(),
        "threads": candle_core::utils::get_num_threads(),
        "hostname": hostname(),
    })
}
