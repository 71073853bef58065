//! What the harness reads about the process under test: its CPU time, utime + stime over all its
//! threads from `/proc/<pid>/stat` (valid whether or not the load generator saturates), and its
//! resident memory, `VmRSS` from `/proc/<pid>/status`.

use anyhow::{Context, anyhow};

/// A process watched through /proc.
#[derive(Debug, Clone, Copy)]
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    /// Nanoseconds per clock tick (`getconf CLK_TCK`, 100 on Linux).
    pub tick_ns: u64,
}

impl Proc {
    /// Watches `pid`; `clk_tck` is the kernel's clock ticks per second.
    pub fn new(pid: u32, clk_tck: u64) -> Self {
        Self {
            pid,
            tick_ns: 1_000_000_000 / clk_tck.max(1),
        }
    }

    /// CPU time used so far (user + system, all threads, live and exited), in nanoseconds.
    pub fn cpu_ns(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/stat", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        // The command name (field 2) may hold spaces; fields after it start at the last ')'.
        let rest = text
            .rfind(')')
            .map(|i| &text[i + 1..])
            .ok_or_else(|| anyhow!("{path}: no command name"))?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // After ')': field 3 (state) is index 0, so utime (14) is 11 and stime (15) is 12.
        let tick = |i: usize| -> anyhow::Result<u64> {
            fields
                .get(i)
                .ok_or_else(|| anyhow!("{path}: short line"))?
                .parse::<u64>()
                .with_context(|| format!("{path}: field {}", i + 3))
        };
        Ok((tick(11)? + tick(12)?) * self.tick_ns)
    }

    /// Resident set size, in bytes.
    pub fn rss_bytes(&self) -> anyhow::Result<u64> {
        let path = format!("/proc/{}/status", self.pid);
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        let line = text
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .ok_or_else(|| anyhow!("{path}: no VmRSS"))?;
        let kib: u64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| anyhow!("{path}: bad VmRSS"))?
            .parse()
            .with_context(|| format!("{path}: VmRSS"))?;
        Ok(kib * 1024)
    }
}

/// CPU time of an optional process, so runs without one (direct) read 0.
pub fn cpu_ns(p: Option<&Proc>) -> anyhow::Result<u64> {
    p.map_or(Ok(0), Proc::cpu_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_cpu_and_memory() {
        let me = Proc::new(std::process::id(), 100);
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        assert!(me.cpu_ns().unwrap() > 0);
        assert!(me.rss_bytes().unwrap() > 1024 * 1024);
    }
}
