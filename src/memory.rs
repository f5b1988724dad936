//! The memory this process can still take (free memory, cgroup and `ulimit -v` limits), and
//! the check that a size fits before it is allocated.

/// Make glibc's allocator keep freed memory for the next allocation instead of handing it back
/// to the kernel: no `mmap` for large blocks (`M_MMAP_MAX` 0), one arena (`M_ARENA_MAX` 1), no
/// trimming of the heap's top (`M_TRIM_THRESHOLD` 2 GiB, the most it takes). A forward pass
/// allocates each layer's output afresh (tens of MB per batch); by default every such block is
/// a fresh `mmap` whose pages the kernel faults in and zeroes on first touch, then unmaps:
/// measured on EfficientNet-B0 at 224, batch 16 (2-core AMD EPYC, AVX-512), a quarter of the
/// extraction's time (36 -> 48 images/s with these settings; bench/README.md, 2026-12-05). Peak
/// memory stays what the largest step needs; the process keeps that much until it ends. Does
/// nothing off glibc.
pub fn reuse_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets allocator parameters; called before any thread allocates
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_MAX, 0);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

/// Memory this process can still take, in bytes: the least of the machine's available memory
/// (`MemAvailable`), the room left under its cgroup's limit (v2 `memory.max`, v1 `memory.limit_in_bytes`), and the address
/// space left under `ulimit -v`. `None` where none of them can be read (not Linux).
pub fn available_memory() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok();
    let avail = meminfo
        .as_deref()
        .and_then(|s| kib_field(s, "MemAvailable:"));
    let cgroup = cgroup_room();
    let address_space = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with("Max address space"))?;
            let soft = line.split_whitespace().nth(3)?.parse::<u64>().ok()?;
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            Some(soft.saturating_sub(kib_field(&status, "VmSize:").unwrap_or(0)))
        });
    [avail, cgroup, address_space].into_iter().flatten().min()
}

/// The room left under this process's cgroup memory limit (v2 `memory.max`, v1
/// `memory.limit_in_bytes`), not counting inactive file pages (page cache the kernel drops
/// before it refuses memory). `None` without a limit.
fn cgroup_room() -> Option<u64> {
    let read_num = |p: &std::path::Path| {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| s.trim().parse::<u64>().ok())
    };
    let stat_field = |p: &std::path::Path, name: &str| -> u64 {
        std::fs::read_to_string(p)
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix(name)?.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let root = std::path::Path::new("/sys/fs/cgroup");
    let mut dirs = Vec::new();
    for line in own.lines() {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            dirs.push((
                root.join(rel),
                "memory.max",
                "memory.current",
                "inactive_file ",
            ));
        } else if controllers.split(',').any(|c| c == "memory") {
            let base = root.join("memory");
            for d in [base.join(rel), base.clone()] {
                dirs.push((
                    d,
                    "memory.limit_in_bytes",
                    "memory.usage_in_bytes",
                    "total_inactive_file ",
                ));
            }
        }
    }
    dirs.push((
        root.to_path_buf(),
        "memory.max",
        "memory.current",
        "inactive_file ",
    ));
    dirs.into_iter().find_map(|(d, max, cur, inactive)| {
        let max = read_num(&d.join(max))?;
        let cur = read_num(&d.join(cur))?;
        // v1 reports "no limit" as a huge number
        (max < (1u64 << 60)).then(|| {
            max.saturating_sub(cur.saturating_sub(stat_field(&d.join("memory.stat"), inactive)))
        })
    })
}

/// A `NAME: N kB` field of a /proc file, in bytes.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let kb: u64 = text
        .lines()
        .find(|l| l.starts_with(name))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Bytes in a short human form (`1.5 GiB`).
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 6] = ["bytes", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} bytes")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An error unless `bytes` (what `what` would take) fit in the memory this process can still
/// take; `what` names the key or file, the size asked and why it costs that much.
pub fn ensure_fits(what: impl FnOnce() -> String, bytes: u64) -> std::result::Result<(), String> {
    match available_memory() {
        Some(avail) if bytes > avail => Err(format!(
            "{} would take {} of memory, and this process can take {} more now (free memory, cgroup and ulimit -v limits); lower it, or run on a machine with more memory",
            what(),
            human_bytes(bytes),
            human_bytes(avail)
        )),
        _ => Ok(()),
    }
}

/// The most pixels an image may have (width x height). A decoded RGB image takes 3 bytes per
/// pixel, and the decoder may need as much again: 100 Mpixel bounds one decode near 600 MB.
/// Raise it with `RUNNER_MAX_IMAGE_PIXELS` for larger scans.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// `RUNNER_MAX_IMAGE_PIXELS`, or `MAX_IMAGE_PIXELS` when unset or not a number.
pub fn max_image_pixels() -> u64 {
    std::env::var("RUNNER_MAX_IMAGE_PIXELS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(MAX_IMAGE_PIXELS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_is_known_here_and_bounds_what_fits() {
        let avail = available_memory().expect("Linux reports MemAvailable");
        assert!(avail > 0);
        assert!(ensure_fits(|| "a byte".into(), 1).is_ok());
        let e = ensure_fits(|| "everything".into(), u64::MAX).unwrap_err();
        assert!(e.contains("everything") && e.contains("of memory"), "{e}");
        assert_eq!(human_bytes(512), "512 bytes");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
