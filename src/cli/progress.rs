//! Progress bars on stderr, drawn by the CLI from what the library reports (a terminal only,
//! and no bars with `--json`).
//!
//! The writing bar is drawn at once (no blank first moments), counts in the same decimal units
//! as the rest of the output, smooths the rate over a few seconds (a shard's sync or a slow tile
//! makes the instantaneous rate jump), and shows an ETA only after half a second of writing:
//! never `eta 0s` while work remains. Downloads and uploads get a bar each, in the same units.

use std::sync::Mutex;
use std::time::Instant;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use loraweld::options::human_bytes;
use loraweld::{Progress, ProgressHook};

/// Time constant of the rate's exponential smoothing.
const SMOOTHING_S: f64 = 3.0;
/// No rate or ETA before this much writing.
const WARMUP_S: f64 = 0.5;

/// The bars of one command, one per kind of work under way.
struct Bars {
    multi: MultiProgress,
    start: Instant,
    writing: Option<(ProgressBar, Rate)>,
    downloading: Option<(String, ProgressBar)>,
    uploading: Option<ProgressBar>,
}

fn bar(multi: &MultiProgress, template: &str) -> ProgressBar {
    let pb = ProgressBar::new(0);
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    multi.add(pb)
}

impl Bars {
    fn update(&mut self, p: Progress<'_>) {
        match p {
            Progress::Writing { done, total, kept } => {
                let t = self.start.elapsed().as_secs_f64();
                let multi = &self.multi;
                let (pb, rate) = self.writing.get_or_insert_with(|| {
                    let pb = bar(multi, "loraweld: writing{prefix} [{bar:30}] {msg}");
                    // The first frame already says something.
                    pb.set_length(total);
                    pb.set_message(line(0, total, &Rate::default()));
                    if kept > 0 {
                        pb.set_prefix(format!(" ({kept} shard(s) kept)"));
                    }
                    (pb, Rate::default())
                });
                let done = done.min(total);
                rate.sample(t, done);
                pb.set_length(total);
                pb.set_message(line(done, total, rate));
                pb.set_position(done);
            }
            Progress::Downloading { file, done, total } => {
                if self.downloading.as_ref().is_some_and(|(f, _)| f != file) {
                    if let Some((_, pb)) = self.downloading.take() {
                        pb.finish_and_clear();
                    }
                }
                let multi = &self.multi;
                let (_, pb) = self.downloading.get_or_insert_with(|| {
                    let pb = bar(
                        multi,
                        "{msg} [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}",
                    );
                    pb.set_message(format!("loraweld: downloading {file}"));
                    (file.to_string(), pb)
                });
                pb.set_length(total.unwrap_or(done));
                pb.set_position(done);
            }
            Progress::Uploading { done, total } => {
                let multi = &self.multi;
                let pb = self.uploading.get_or_insert_with(|| {
                    bar(
                        multi,
                        "loraweld: uploading [{bar:30}] {decimal_bytes}/{decimal_total_bytes} {decimal_bytes_per_sec}",
                    )
                });
                pb.set_length(total);
                pb.set_position(done);
            }
            Progress::Finished => {
                for pb in [
                    self.writing.take().map(|(b, _)| b),
                    self.downloading.take().map(|(_, b)| b),
                    self.uploading.take(),
                ]
                .into_iter()
                .flatten()
                {
                    pb.finish_and_clear();
                }
            }
        }
    }
}

/// A hook that draws bars on stderr.
pub fn stderr_bars() -> ProgressHook {
    let bars = Mutex::new(Bars {
        multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
        start: Instant::now(),
        writing: None,
        downloading: None,
        uploading: None,
    });
    ProgressHook::new(move |p| {
        if let Ok(mut b) = bars.lock() {
            b.update(p);
        }
    })
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
