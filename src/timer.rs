//! A timer that wakes its thread once per expiry: a `timerfd` on the thread's reactor.
//!
//! tokio's timer wheel wakes a thread more than once for one far deadline: once at the start
//! of each wheel slot the deadline cascades through (64 ms slots for deadlines up to 4 s
//! away, 4 s slots beyond), then at the deadline. An idle daemon's ten-second sample took
//! three or four wake-ups that way (strace: 11 in 30 s for 3 samples). The daemon's periodic
//! work while idle (the rate sample, the systemd watchdog, the ingest tick) waits on this
//! instead, so each period is one wake-up.

use std::fs::File;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

use tokio::io::unix::AsyncFd;

/// A `timerfd` (monotonic clock) registered with the current thread's reactor.
pub struct Timer {
    fd: AsyncFd<File>,
}

impl Timer {
    /// A disarmed timer. Must be called on a thread with a tokio runtime.
    pub fn new() -> std::io::Result<Timer> {
        // SAFETY: timerfd_create takes two flags and returns a new descriptor or -1.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor just created here and owned by nothing else.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(raw) });
        // SAFETY: the descriptor is the timer's own, which the `AsyncFd` owns from now on (it
        // is valid and open for as long as the registration).
        let fd =
            unsafe { AsyncFd::register(file) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        Ok(Timer { fd })
    }

    /// A timer that expires every `every`, the first time `every` from now.
    pub fn periodic(every: Duration) -> std::io::Result<Timer> {
        let t = Timer::new()?;
        t.arm(every, Some(every))?;
        Ok(t)
    }

    /// Arms the timer to expire `after` from now, then every `then` (once if `None`); an
    /// expiry not yet waited for is forgotten.
    pub fn arm(&self, after: Duration, then: Option<Duration>) -> std::io::Result<()> {
        let spec = |d: Duration| libc::timespec {
            tv_sec: d.as_secs() as libc::time_t,
            tv_nsec: d.subsec_nanos() as libc::c_long,
        };
        let value = libc::itimerspec {
            it_interval: spec(then.unwrap_or(Duration::ZERO)),
            // A zero value would disarm it.
            it_value: spec(after.max(Duration::from_nanos(1))),
        };
        // SAFETY: the descriptor is a timerfd; `value` is a valid itimerspec and the old value
        // is not asked for (null).
        let rc = unsafe {
            libc::timerfd_settime(
                self.fd.get_ref().as_raw_fd(),
                0,
                &value,
                std::ptr::null_mut(),
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits for the next expiry; returns how many passed since the last wait.
    pub async fn expired(&self) -> std::io::Result<u64> {
        loop {
            let mut guard = self.fd.readable().await?;
            let read = guard.try_io(|fd| {
                let mut b = [0u8; 8];
                fd.get_ref().read_exact(&mut b)?;
                Ok(u64::from_ne_bytes(b))
            });
            if let Ok(r) = read {
                // Read: not readable again before the next expiry (saves a read that fails).
                guard.clear_ready();
                return r;
            }
        }
    }
}

/// Sleeps on a [`Timer`], or on tokio's timers where none can be had.
pub struct Sleeper(Option<Timer>);

impl Sleeper {
    pub fn new() -> Sleeper {
        match Timer::new() {
            Ok(t) => Sleeper(Some(t)),
            Err(error) => {
                tracing::debug!(error = %error, "no timerfd; sleeping on tokio's timers");
                Sleeper(None)
            }
        }
    }

    /// Sleeps for `d`, waking the thread once.
    pub async fn sleep(&self, d: Duration) {
        if let Some(t) = &self.0
            && t.arm(d, None).is_ok()
            && t.expired().await.is_ok()
        {
            return;
        }
        tokio::time::sleep(d).await;
    }
}

impl Default for Sleeper {
    fn default() -> Self {
        Sleeper::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_timer_expires_after_its_time_and_a_periodic_one_keeps_going() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let t0 = std::time::Instant::now();
            Sleeper::new().sleep(Duration::from_millis(30)).await;
            assert!(t0.elapsed() >= Duration::from_millis(30));

            let p = Timer::periodic(Duration::from_millis(10)).unwrap();
            let t0 = std::time::Instant::now();
            let mut n = 0;
            while n < 3 {
                n += p.expired().await.unwrap();
            }
            assert!(t0.elapsed() >= Duration::from_millis(30));

            // Re-armed before it expired: only the new time counts.
            let t = Timer::new().unwrap();
            t.arm(Duration::from_secs(3600), None).unwrap();
            t.arm(Duration::from_millis(5), None).unwrap();
            assert_eq!(t.expired().await.unwrap(), 1);
        });
    }
}
