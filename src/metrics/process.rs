//! The standard `process_*` families, read from `/proc/self` at each scrape.
//!
//! Written here rather than taken from the prometheus crate's `process`
//! feature: that one counts CPU in whole seconds (a sidecar using 2 % of a
//! core shows a rate of 0, then a jump), and pulls a second `rustix` through
//! `procfs`. What it needs is a few lines of four text files. Clock ticks and
//! page size come from the auxiliary vector (`/proc/self/auxv`), so no libc
//! call (and no `unsafe`) is needed. Off Linux, nothing is exported.

use std::sync::Mutex;

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{Counter, IntGauge};

/// `AT_PAGESZ` and `AT_CLKTCK` of `<elf.h>`.
const AT_PAGESZ: usize = 6;
const AT_CLKTCK: usize = 17;

/// What the process is using now.
pub struct ProcessCollector {
    cpu: Counter,
    /// The CPU seconds `cpu` was last brought to: a counter only goes up by a
    /// difference, and two scrapes at once must not add it twice.
    cpu_seen: Mutex<f64>,
    resident: IntGauge,
    virtual_memory: IntGauge,
    open_fds: IntGauge,
    max_fds: IntGauge,
    start_time: IntGauge,
    threads: IntGauge,
    descs: Vec<Desc>,
    ticks_per_second: f64,
    page_size: i64,
}

/// Every option here is a constant; a failure would be a typo, caught by any
/// test that scrapes.
#[allow(clippy::expect_used)]
fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::new(name, help).expect("valid constant metric options")
}

impl ProcessCollector {
    #[allow(clippy::expect_used)]
    pub fn new() -> Self {
        let cpu = Counter::new(
            "process_cpu_seconds_total",
            "Total user and system CPU time spent in seconds.",
        )
        .expect("valid constant metric options");
        let resident = gauge(
            "process_resident_memory_bytes",
            "Resident memory size in bytes.",
        );
        let virtual_memory = gauge(
            "process_virtual_memory_bytes",
            "Virtual memory size in bytes.",
        );
        let open_fds = gauge("process_open_fds", "Number of open file descriptors.");
        let max_fds = gauge(
            "process_max_fds",
            "Maximum number of open file descriptors.",
        );
        let start_time = gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
        );
        let threads = gauge("process_threads", "Number of OS threads in the process.");
        let mut descs: Vec<Desc> = cpu.desc().into_iter().cloned().collect();
        for g in [
            &resident,
            &virtual_memory,
            &open_fds,
            &max_fds,
            &start_time,
            &threads,
        ] {
            descs.extend(g.desc().into_iter().cloned());
        }
        let auxv = std::fs::read("/proc/self/auxv").unwrap_or_default();
        let ticks = aux(&auxv, AT_CLKTCK).filter(|t| *t > 0).unwrap_or(100);
        let page = aux(&auxv, AT_PAGESZ).filter(|p| *p > 0).unwrap_or(4096);
        let collector = ProcessCollector {
            cpu,
            cpu_seen: Mutex::new(0.0),
            resident,
            virtual_memory,
            open_fds,
            max_fds,
            start_time,
            threads,
            descs,
            ticks_per_second: ticks as f64,
            page_size: i64::try_from(page).unwrap_or(4096),
        };
        // The start time does not change: read once.
        if let Some(start) = collector.start_seconds() {
            collector.start_time.set(start);
        }
        collector
    }

    /// Seconds since the epoch the process started at: its start in ticks
    /// after boot (`/proc/self/stat`) plus the boot time (`/proc/stat`).
    fn start_seconds(&self) -> Option<i64> {
        let stat = Stat::read()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        let btime: i64 = boot
            .lines()
            .find_map(|l| l.strip_prefix("btime "))?
            .trim()
            .parse()
            .ok()?;
        Some(btime + (stat.start_ticks as f64 / self.ticks_per_second) as i64)
    }

    fn refresh(&self) -> bool {
        let Some(stat) = Stat::read() else {
            return false;
        };
        let cpu = (stat.utime + stat.stime) as f64 / self.ticks_per_second;
        {
            let mut seen = self.cpu_seen.lock().unwrap_or_else(|p| p.into_inner());
            if cpu > *seen {
                self.cpu.inc_by(cpu - *seen);
                *seen = cpu;
            }
        }
        self.resident.set(stat.rss_pages * self.page_size);
        self.virtual_memory.set(stat.vsize);
        self.threads.set(stat.threads);
        if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
            self.open_fds.set(fds.count() as i64);
        }
        if let Some(max) = max_open_files() {
            self.max_fds.set(max);
        }
        true
    }
}

impl Default for ProcessCollector {
    fn default() -> Self {
        Self::new()
    }
}

impl Collector for ProcessCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        if !self.refresh() {
            return Vec::new();
        }
        let mut out = self.cpu.collect();
        for g in [
            &self.resident,
            &self.virtual_memory,
            &self.open_fds,
            &self.max_fds,
            &self.start_time,
            &self.threads,
        ] {
            out.extend(g.collect());
        }
        out
    }
}

/// The fields of `/proc/self/stat` that are read (proc(5) numbers them).
struct Stat {
    utime: u64,
    stime: u64,
    threads: i64,
    start_ticks: u64,
    vsize: i64,
    rss_pages: i64,
}

impl Stat {
    fn read() -> Option<Stat> {
        Stat::parse(&std::fs::read_to_string("/proc/self/stat").ok()?)
    }

    /// The command name (field 2) is in parentheses and may hold spaces and
    /// parentheses itself: the fields are counted from the last `)`.
    fn parse(text: &str) -> Option<Stat> {
        let after = &text[text.rfind(')')? + 1..];
        // after[0] is field 3 (state).
        let fields: Vec<&str> = after.split_whitespace().collect();
        let field = |n: usize| fields.get(n - 3).copied();
        Some(Stat {
            utime: field(14)?.parse().ok()?,
            stime: field(15)?.parse().ok()?,
            threads: field(20)?.parse().ok()?,
            start_ticks: field(22)?.parse().ok()?,
            vsize: field(23)?.parse().ok()?,
            rss_pages: field(24)?.parse().ok()?,
        })
    }
}

/// The soft limit of open files, `Max open files` in `/proc/self/limits`.
fn max_open_files() -> Option<i64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line
        .strip_prefix("Max open files")?
        .split_whitespace()
        .next()?;
    soft.parse().ok()
}

/// The value of `key` in an auxiliary vector: pairs of native words.
fn aux(auxv: &[u8], key: usize) -> Option<usize> {
    const WORD: usize = size_of::<usize>();
    let word = |b: &[u8]| b.try_into().ok().map(usize::from_ne_bytes);
    auxv.chunks_exact(2 * WORD).find_map(|pair| {
        let (k, v) = pair.split_at(WORD);
        (word(k)? == key).then(|| word(v)).flatten()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_from_the_last_parenthesis() {
        // A command name with a space and a parenthesis, as a thread may set.
        let line = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 1530 0 0 0 \
                    250 75 0 0 20 0 6 0 123456 987654321 2048 18446744073709551615";
        let s = Stat::parse(line).expect("parses");
        assert_eq!((s.utime, s.stime), (250, 75));
        assert_eq!(s.threads, 6);
        assert_eq!(s.start_ticks, 123456);
        assert_eq!(s.vsize, 987654321);
        assert_eq!(s.rss_pages, 2048);
    }

    #[test]
    fn aux_finds_a_key_among_word_pairs() {
        let mut v = Vec::new();
        for (k, val) in [(AT_PAGESZ, 4096usize), (AT_CLKTCK, 100), (0, 0)] {
            v.extend_from_slice(&k.to_ne_bytes());
            v.extend_from_slice(&val.to_ne_bytes());
        }
        assert_eq!(aux(&v, AT_CLKTCK), Some(100));
        assert_eq!(aux(&v, AT_PAGESZ), Some(4096));
        assert_eq!(aux(&v, 99), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn this_process_reads_plausibly() {
        let p = ProcessCollector::new();
        let families = p.collect();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .and_then(|f| f.get_metric().first())
                .map(|m| {
                    if name.ends_with("_total") {
                        m.get_counter().get_value()
                    } else {
                        m.get_gauge().get_value()
                    }
                })
        };
        assert!(value("process_resident_memory_bytes").is_some_and(|v| v > 1e5));
        assert!(value("process_open_fds").is_some_and(|v| v >= 3.0));
        assert!(value("process_max_fds").is_some_and(|v| v >= 3.0));
        assert!(value("process_threads").is_some_and(|v| v >= 1.0));
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        let start = value("process_start_time_seconds").unwrap_or(0.0);
        assert!(
            start > now - 86400.0 && start <= now + 1.0,
            "{start} vs {now}"
        );
    }
}
