//! A look at processes through `/proc`: memory, children, CPU time, the page's query
//! workers.

/// A field of `/proc/<pid>/status` in KiB (VmHWM, VmRSS).
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = text.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The child processes of `pid` (its query workers).
pub fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let text = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        out.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    out
}

/// CPU seconds (user + system) of the processes `pids`, as far as they still exist.
pub fn cpu_seconds(pids: &[u32]) -> f64 {
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    pids.iter()
        .filter_map(|p| std::fs::read_to_string(format!("/proc/{p}/stat")).ok())
        .map(|stat| {
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            (f[11].parse::<f64>().unwrap() + f[12].parse::<f64>().unwrap()) / tick
        })
        .sum()
}

/// The query workers of `pid` of one role (`page` or `sql`).
pub fn workers(pid: u32, role: &str) -> Vec<u32> {
    children(pid)
        .into_iter()
        .filter(|c| {
            let cmd = std::fs::read(format!("/proc/{c}/cmdline")).unwrap_or_default();
            String::from_utf8_lossy(&cmd).contains(&format!("--role\0{role}"))
        })
        .collect()
}
