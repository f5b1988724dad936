//! Opt-in timing of the extraction's stages (`RUNNER_PROFILE=1`): each layer and the
//! preprocessing are bracketed by device synchronisations and their wall time summed, and
//! `runner bench`/`extract` print the table at the end. Off by default: the synchronisations
//! stop the GPU from running ahead of the host.

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex};
use std::time::Instant;

use candle_core::Device;

use crate::error::Result;

static ENABLED: LazyLock<bool> =
    LazyLock::new(|| std::env::var("RUNNER_PROFILE").is_ok_and(|v| !v.is_empty() && v != "0"));
static TIMES: LazyLock<Mutex<BTreeMap<String, (f64, u64)>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

pub fn enabled() -> bool {
    *ENABLED
}

/// Run `f`, timing it under `name` when profiling is on.
pub fn time<T>(name: &str, device: &Device, f: impl FnOnce() -> Result<T>) -> Result<T> {
    if !enabled() {
        return f();
    }
    device.synchronize()?;
    let t = Instant::now();
    let r = f()?;
    device.synchronize()?;
    let s = t.elapsed().as_secs_f64();
    if let Ok(mut m) = TIMES.lock() {
        let e = m.entry(name.to_string()).or_insert((0.0, 0));
        e.0 += s;
        e.1 += 1;
    }
    Ok(r)
}

/// The table of summed times (empty when profiling is off or nothing was timed).
pub fn report() -> String {
    let Ok(m) = TIMES.lock() else {
        return String::new();
    };
    let total: f64 = m.values().map(|v| v.0).sum();
    let mut rows: Vec<_> = m.iter().collect();
    rows.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let mut out = String::new();
    for (k, (s, n)) in rows {
        out.push_str(&format!(
            "profile {k:>10}: {s:9.4} s {:5.1}% ({n} calls)\n",
            100.0 * s / total.max(1e-12)
        ));
    }
    out
}
