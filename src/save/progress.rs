//! The save's progress bar on stderr, drawn only when the caller asks (the CLI asks when stderr
//! is a terminal and no JSON is wanted).
//!
//! It is drawn at once (no blank first moments), counts in the same decimal units as the rest of
//! the output, smooths the rate over a few seconds (a shard's sync or a slow tile makes the
//! instantaneous rate jump), and shows an ETA only once the rate means something: never
//! `eta 0s` while work remains.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::options::human_bytes;

/// How often the bar is redrawn.
const TICK: Duration = Duration::from_millis(100);
/// Time constant of the rate's exponential smoothing.
const SMOOTHING_S: f64 = 3.0;
/// No rate or ETA before this much writing.
const WARMUP_S: f64 = 0.5;

/// Runs `work` while a bar follows `written` towards `total` (bytes still to write; `resumed`
/// shards were kept from an interrupted run and are not in it).
pub(crate) fn while_drawing<T>(
    on: bool,
    total: u64,
    resumed: usize,
    written: &AtomicU64,
    work: impl FnOnce() -> T,
) -> T {
    if !on {
        return work();
    }
    let finished = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let finished_ref = &finished;
        let bar = sc.spawn(move || draw(total, resumed, written, finished_ref));
        let r = work();
        finished.store(true, Ordering::Relaxed);
        let _ = bar.join();
        r
    })
}

fn draw(total: u64, resumed: usize, written: &AtomicU64, finished: &AtomicBool) {
    let pb = indicatif::ProgressBar::with_draw_target(Some(total), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) = indicatif::ProgressStyle::with_template("{prefix} [{bar:30}] {msg}") {
        pb.set_style(style.progress_chars("=> "));
    }
    // The first frame already says something.
    pb.set_message(line(0, total, &Rate::default()));
    pb.set_prefix(if resumed > 0 {
        format!("loraweld: writing ({resumed} shard(s) kept)")
    } else {
        "loraweld: writing".to_string()
    });
    let mut rate = Rate::default();
    let start = Instant::now();
    loop {
        let done = finished.load(Ordering::Relaxed);
        let pos = written.load(Ordering::Relaxed).min(total);
        rate.sample(start.elapsed().as_secs_f64(), pos);
        pb.set_message(line(pos, total, &rate));
        pb.set_position(pos);
        if done {
            break;
        }
        std::thread::sleep(TICK);
    }
    pb.finish_and_clear();
}

/// `1.23 GB / 4.00 GB  412 MB/s  eta 7s`.
fn line(pos: u64, total: u64, rate: &Rate) -> String {
    let sizes = format!("{} / {}", human_bytes(pos), human_bytes(total));
    match rate.per_s() {
        _ if pos >= total && total > 0 => format!("{sizes}  finishing"),
        Some(r) if r > 0.0 => {
            let eta = (total - pos) as f64 / r;
            format!("{sizes}  {}/s  eta {}", human_bytes(r as u64), eta_text(eta))
        }
        _ if pos == 0 => format!("{sizes}  starting"),
        _ => sizes,
    }
}

/// `7s`, `3m05s`, `1h02m`; at least 1 s (the last second is "finishing").
fn eta_text(s: f64) -> String {
    let s = s.ceil().max(1.0) as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Bytes per second, exponentially smoothed from the first byte on.
#[derive(Debug, Default)]
struct Rate {
    /// When and where the first byte was seen.
    first: Option<(f64, u64)>,
    last: Option<(f64, u64)>,
    smoothed: Option<f64>,
}

impl Rate {
    fn sample(&mut self, t: f64, pos: u64) {
        if pos == 0 {
            return;
        }
        let first = *self.first.get_or_insert((t, pos));
        if let Some((t0, p0)) = self.last {
            let dt = t - t0;
            if dt > 0.0 {
                let now = pos.saturating_sub(p0) as f64 / dt;
                let a = 1.0 - (-dt / SMOOTHING_S).exp();
                self.smoothed = Some(match self.smoothed {
                    // Until the smoothing has history, the average since the first byte.
                    None => (pos - first.1) as f64 / (t - first.0).max(dt),
                    Some(s) => s + a * (now - s),
                });
            }
        }
        self.last = Some((t, pos));
    }

    /// The rate to show: none during the first half second of writing.
    fn per_s(&self) -> Option<f64> {
        let (t0, _) = self.first?;
        let (t, _) = self.last?;
        (t - t0 >= WARMUP_S).then_some(self.smoothed?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_eta_until_the_rate_means_something() {
        let mut r = Rate::default();
        r.sample(0.0, 0);
        assert_eq!(line(0, 4_000_000_000, &r), "0 B / 4.00 GB  starting");
        r.sample(0.1, 100_000_000);
        r.sample(0.5, 500_000_000);
        assert!(r.per_s().is_none(), "nothing shown in the first half second");
        assert_eq!(line(500_000_000, 4_000_000_000, &r), "500 MB / 4.00 GB");
        r.sample(1.1, 1_100_000_000);
        let l = line(1_100_000_000, 4_000_000_000, &r);
        assert_eq!(l, "1.10 GB / 4.00 GB  1.00 GB/s  eta 3s");
        assert_eq!(line(4_000_000_000, 4_000_000_000, &r), "4.00 GB / 4.00 GB  finishing");
    }

    #[test]
    fn the_rate_is_smoothed() {
        let mut r = Rate::default();
        let mut pos = 0;
        for i in 1..=30 {
            pos += 100_000_000; // 1 GB/s
            r.sample(i as f64 * 0.1, pos);
        }
        // A stall of one tick (a shard's sync) barely moves it.
        r.sample(3.1, pos);
        let s = r.per_s().unwrap();
        assert!((0.9e9..1.0e9).contains(&s), "{s}");
    }

    #[test]
    fn eta_reads_well() {
        assert_eq!(eta_text(0.2), "1s");
        assert_eq!(eta_text(59.0), "59s");
        assert_eq!(eta_text(185.0), "3m05s");
        assert_eq!(eta_text(3720.0), "1h02m");
    }
}
