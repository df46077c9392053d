//! What a measured stretch cost the whole process, from `getrusage`: the benchmark's
//! clients and what the embedded modes run in it (the unreplicated server, or the
//! frontend, the replicas and a `--usig process` server's thread; not a `--target`
//! server, nor the swtpm processes of `--usig tpm`). Everything else this process runs
//! meanwhile counts too: the other deployments take turns with the measured one, and
//! their background work (ticks, a replica finishing the previous run) lands in its
//! windows. So the figures are estimates of what one deployment's work costs. On a
//! machine where the replicas share two cores, CPU per operation and the context
//! switches behind it explain most of the distance between the primitives' floor and
//! the measured latency.

use std::time::Duration;

use serde::Serialize;

/// Cumulative usage of this process, all threads.
#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    user: Duration,
    system: Duration,
    voluntary: u64,
    involuntary: u64,
}

impl Usage {
    pub fn now() -> Usage {
        // SAFETY: `rusage` is plain integers, so all zeros is a valid value, and
        // getrusage writes one `rusage` into the value we own.
        let (rc, ru) = unsafe {
            let mut ru: libc::rusage = std::mem::zeroed();
            (libc::getrusage(libc::RUSAGE_SELF, &raw mut ru), ru)
        };
        // It fails only for a bad `who` or pointer, neither of which can happen here.
        assert_eq!(
            rc,
            0,
            "getrusage(RUSAGE_SELF): {}",
            std::io::Error::last_os_error()
        );
        let time = |t: libc::timeval| {
            Duration::from_secs(u64::try_from(t.tv_sec).unwrap_or(0))
                + Duration::from_micros(u64::try_from(t.tv_usec).unwrap_or(0))
        };
        Usage {
            user: time(ru.ru_utime),
            system: time(ru.ru_stime),
            voluntary: u64::try_from(ru.ru_nvcsw).unwrap_or(0),
            involuntary: u64::try_from(ru.ru_nivcsw).unwrap_or(0),
        }
    }

    /// What was used since `earlier`.
    pub fn since(&self, earlier: &Usage) -> Usage {
        Usage {
            user: self.user.saturating_sub(earlier.user),
            system: self.system.saturating_sub(earlier.system),
            voluntary: self.voluntary.saturating_sub(earlier.voluntary),
            involuntary: self.involuntary.saturating_sub(earlier.involuntary),
        }
    }

    pub fn add(&mut self, other: &Usage) {
        self.user += other.user;
        self.system += other.system;
        self.voluntary += other.voluntary;
        self.involuntary += other.involuntary;
    }

    /// Per unit of work (an operation, a run), over `wall` of elapsed time.
    pub fn per(&self, units: usize, wall: Duration) -> Cost {
        let units = units.max(1) as f64;
        let cpu = (self.user + self.system).as_secs_f64();
        Cost {
            cpu_us: cpu * 1e6 / units,
            user_us: self.user.as_secs_f64() * 1e6 / units,
            system_us: self.system.as_secs_f64() * 1e6 / units,
            voluntary_switches: self.voluntary as f64 / units,
            involuntary_switches: self.involuntary as f64 / units,
            cores_busy: if wall.is_zero() {
                0.0
            } else {
                cpu / wall.as_secs_f64()
            },
        }
    }
}

/// CPU and context switches per unit of work, and how many cores were busy on average.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Cost {
    pub cpu_us: f64,
    pub user_us: f64,
    pub system_us: f64,
    /// A thread blocked (waited for a message, a sync, a lock).
    pub voluntary_switches: f64,
    /// A runnable thread was displaced (preempted, mostly by a woken one).
    pub involuntary_switches: f64,
    pub cores_busy: f64,
}

impl Cost {
    pub fn switches(&self) -> f64 {
        self.voluntary_switches + self.involuntary_switches
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_work_shows_up_as_cpu_of_this_process() {
        let start = Usage::now();
        let t = std::time::Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(30) {
            x = std::hint::black_box(x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1));
        }
        let used = Usage::now().since(&start);
        let cost = used.per(10, t.elapsed());
        // Spinning 30 ms costs CPU (the exact share depends on the machine's load).
        assert!(cost.cpu_us > 0.0, "{cost:?}");
        assert!(cost.cores_busy > 0.0 && cost.cores_busy < 64.0, "{cost:?}");
        assert_eq!(Usage::default().per(0, Duration::ZERO).cores_busy, 0.0);
    }
}
