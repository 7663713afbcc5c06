//! What this process and machine report: peak and current resident memory, the load average (from
//! /proc) and the CPU model as the official-code harness stamps it.

/// `VmHWM` (peak resident set) of this process in MiB, 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    proc_status_kib("VmHWM:") as f64 / 1024.0
}

fn proc_status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// The 1/5/15-minute load average, zeros where /proc is missing.
pub fn load_average() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let mut it = s.split_whitespace().map(|v| v.parse().unwrap_or(0.0));
    [
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
        it.next().unwrap_or(0.0),
    ]
}

/// `VmRSS` (current resident set) of this process in MiB.
pub(super) fn rss_mib() -> f64 {
    proc_status_kib("VmRSS:") as f64 / 1024.0
}

/// This machine's CPU as the official-code harness stamps it: model name, family and model numbers and
/// the widest vector extension (two machines sold under one name can differ 2.5× in speed).
pub fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| -> String {
        info.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim() == name).then(|| v.trim().to_string())
            })
            .unwrap_or_else(|| "?".into())
    };
    let flags = field("flags");
    let flags: Vec<&str> = flags.split_whitespace().collect();
    let vec = if flags.contains(&"avx512f") {
        "avx512f"
    } else if flags.contains(&"avx2") {
        "avx2"
    } else {
        "sse"
    };
    format!(
        "{} (family {}, model {}, {vec})",
        field("model name"),
        field("cpu family"),
        field("model")
    )
}
