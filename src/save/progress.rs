//! Reports the save's writing progress to the caller's hook, about ten times a second, from a
//! thread of its own while the pipeline runs.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use crate::progress::{Progress, ProgressHook};

/// How often progress is reported.
const TICK: Duration = Duration::from_millis(100);

/// Runs `work` while `hook` hears how `written` goes towards `total` (bytes this run writes;
/// `kept` files were kept from an interrupted run and are not in it).
pub(crate) fn while_reporting<T>(
    hook: Option<&ProgressHook>,
    total: u64,
    kept: usize,
    written: &AtomicU64,
    work: impl FnOnce() -> T,
) -> T {
    let Some(hook) = hook else {
        return work();
    };
    let finished = AtomicBool::new(false);
    std::thread::scope(|sc| {
        let finished_ref = &finished;
        let reporter = sc.spawn(move || loop {
            let done = finished_ref.load(Ordering::Relaxed);
            hook.report(Progress::Writing {
                done: written.load(Ordering::Relaxed),
                total,
                kept,
            });
            if done {
                hook.report(Progress::Finished);
                break;
            }
            std::thread::sleep(TICK);
        });
        let r = work();
        finished.store(true, Ordering::Relaxed);
        let _ = reporter.join();
        r
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn reports_until_the_work_ends_then_finishes() {
        let seen = std::sync::Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let hook = ProgressHook::new(move |p| {
            let tag = match p {
                Progress::Writing { done, total, kept } => format!("{done}/{total}/{kept}"),
                Progress::Finished => "finished".into(),
                _ => "other".into(),
            };
            s.lock().unwrap().push(tag);
        });
        let written = AtomicU64::new(0);
        let r = while_reporting(Some(&hook), 10, 2, &written, || {
            std::thread::sleep(Duration::from_millis(250));
            written.store(10, Ordering::Relaxed);
            7
        });
        assert_eq!(r, 7);
        let seen = seen.lock().unwrap();
        assert_eq!(seen.first().map(String::as_str), Some("0/10/2"));
        assert_eq!(seen[seen.len() - 2], "10/10/2", "the last report is the final count");
        assert_eq!(seen.last().map(String::as_str), Some("finished"));
    }
}
