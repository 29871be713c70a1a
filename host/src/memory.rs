//! The memory limiter: keeps the process's resident memory under
//! `[limits] max_memory_bytes`, as the OpenTelemetry Collector's
//! `memory_limiter` does.
//!
//! The in-flight budgets count request bodies; what an accepted request
//! becomes (its rows, their encoding, the allocator's spare pages) is not
//! known before it is read. So the limiter watches the resident set itself:
//! past the soft limit (`max_memory_bytes` less `memory_spike_bytes`) it
//! hands free pages back to the system and, while still past it, new
//! requests are refused with 503 and `Retry-After` until the requests in
//! flight have finished. The spike allowance is what may arrive between two
//! checks; between them, each admitted request counts as a multiple of its
//! body, so a burst of new connections cannot overshoot the limit before
//! the next check sees what they took.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// How often the resident set is read.
const CHECK_EVERY: Duration = Duration::from_millis(20);

/// What a request may take, as a multiple of its body, until the next
/// check: the body read, its copy in the component, the rows it becomes and
/// their encoding (measured at 2-4x for Logflare batches; 8 leaves room).
const EXPANSION: usize = 8;

#[derive(Default)]
pub struct MemoryLimiter {
    /// 0: no limit.
    limit: usize,
    soft: usize,
    over: AtomicBool,
    resident: AtomicUsize,
    /// What requests admitted since the last check may take.
    admitted: AtomicUsize,
}

impl MemoryLimiter {
    /// A limiter for `limit` bytes (0: none) refusing past `limit - spike`,
    /// checking in a background task while the returned `Arc` lives.
    pub fn start(limit: usize, spike: usize) -> Arc<MemoryLimiter> {
        let limiter = Arc::new(MemoryLimiter {
            limit,
            soft: limit.saturating_sub(spike),
            over: AtomicBool::new(false),
            resident: AtomicUsize::new(resident_bytes().unwrap_or(0)),
            admitted: AtomicUsize::new(0),
        });
        if limit > 0 {
            let weak = Arc::downgrade(&limiter);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(CHECK_EVERY);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(limiter) = weak.upgrade() else { return };
                    limiter.check();
                }
            });
        }
        limiter
    }

    fn check(&self) {
        let Some(mut resident) = resident_bytes() else { return };
        if resident > self.soft {
            release_free_memory();
            resident = resident_bytes().unwrap_or(resident);
        }
        let over = resident > self.soft;
        if over != self.over.swap(over, Ordering::Relaxed) {
            if over {
                tracing::warn!(resident, soft_limit = self.soft, "memory past its soft limit: refusing new requests");
            } else {
                tracing::info!(resident, "memory under its soft limit again: taking requests");
            }
        }
        self.resident.store(resident, Ordering::Relaxed);
        self.admitted.store(0, Ordering::Relaxed);
    }

    /// Whether a request with a body of `bytes` may be taken now. `alone`:
    /// no other request is in flight, so the memory in use is held by
    /// something refusing cannot free (open connections' buffers, the
    /// allocator); the request is taken so the service still makes
    /// progress, one request at a time.
    pub fn admit(&self, bytes: usize, alone: bool) -> bool {
        if self.limit == 0 || alone {
            return true;
        }
        let take = bytes.saturating_mul(EXPANSION);
        let admitted = self.admitted.fetch_add(take, Ordering::Relaxed).saturating_add(take);
        if self.over.load(Ordering::Relaxed) || self.resident().saturating_add(admitted) > self.soft {
            // Saturating: a check may have reset the count meanwhile.
            let _ = self.admitted.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |a| Some(a.saturating_sub(take)));
            return false;
        }
        true
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The resident set at the last check.
    pub fn resident(&self) -> usize {
        self.resident.load(Ordering::Relaxed)
    }
}

/// The process's resident set, from `/proc/self/statm`.
pub fn resident_bytes() -> Option<usize> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: usize = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

fn page_size() -> usize {
    // SAFETY: sysconf has no preconditions.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if size > 0 { size as usize } else { 4096 }
}

/// Gives the allocator's free pages back to the system now.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Sets glibc's malloc up for a server whose large buffers (request bodies,
/// batches) come and go: they are mapped and unmapped on their own, rather
/// than left to fragment the heaps (glibc otherwise raises its mmap
/// threshold after the first large free, up to 32 MiB), and a few arenas
/// serve all threads instead of up to eight per core. glibc's own
/// variables (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) win.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    for (variable, parameter, value) in
        [("MALLOC_MMAP_THRESHOLD_", libc::M_MMAP_THRESHOLD, 128 << 10), ("MALLOC_ARENA_MAX", libc::M_ARENA_MAX, 4)]
    {
        if std::env::var_os(variable).is_none() {
            // SAFETY: mallopt only sets the allocator's parameters; it is
            // called before any other thread starts.
            unsafe {
                libc::mallopt(parameter, value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(limit: usize) -> MemoryLimiter {
        let resident = resident_bytes().expect("/proc/self/statm");
        MemoryLimiter {
            limit,
            soft: limit,
            over: AtomicBool::new(false),
            resident: AtomicUsize::new(resident),
            admitted: AtomicUsize::new(0),
        }
    }

    #[test]
    fn admits_what_fits_until_the_next_check() {
        let resident = resident_bytes().unwrap();
        // Room for 20 MiB more: one 2 MiB body (16 MiB expanded) fits, a second does not.
        let limiter = limiter(resident + (20 << 20));
        assert!(limiter.admit(2 << 20, false));
        assert!(!limiter.admit(2 << 20, false));
        // A refusal gives its share back: a small body still fits.
        assert!(limiter.admit(256 << 10, false));
        // The check reads the resident set again and starts counting anew.
        limiter.check();
        assert!(limiter.admit(2 << 20, false));
    }

    #[test]
    fn refuses_everything_past_the_soft_limit_and_nothing_without_a_limit() {
        let limiter = limiter(1 << 20);
        limiter.check();
        assert!(limiter.over.load(Ordering::Relaxed));
        assert!(!limiter.admit(1, false));
        assert!(limiter.admit(1, true), "a request alone is taken");
        assert!(MemoryLimiter::default().admit(usize::MAX / 2, false));
    }
}
