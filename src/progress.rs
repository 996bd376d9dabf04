//! Progress, reported and never drawn: long operations tell a caller-supplied hook how far they
//! are, and the caller draws it (the CLI draws terminal bars; a Python binding would feed tqdm).
//! The library itself never prints.

use std::sync::Arc;

/// How far a long operation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress<'a> {
    /// Output bytes written of `total` (reported about ten times a second); `kept` files came
    /// from an interrupted run and are not in `total`.
    Writing {
        /// Bytes written so far.
        done: u64,
        /// Bytes this run writes.
        total: u64,
        /// Files kept from an interrupted run.
        kept: usize,
    },
    /// Bytes of one file downloaded from the Hub; a resumed download starts above zero.
    Downloading {
        /// The file in the repo.
        file: &'a str,
        /// Bytes in the cache so far.
        done: u64,
        /// Its size, when the Hub said.
        total: Option<u64>,
    },
    /// Bytes uploaded to the Hub, of what it lacks so far (`total` grows as batches answer).
    Uploading {
        /// Bytes sent.
        done: u64,
        /// Bytes to send, as known now.
        total: u64,
    },
    /// The operation reported before has ended (its bar can go).
    Finished,
}

/// Where progress goes: called from whichever thread makes progress, so it must be cheap and
/// thread-safe.
#[derive(Clone)]
pub struct ProgressHook(Arc<dyn Fn(Progress<'_>) + Send + Sync>);

impl ProgressHook {
    /// Reports progress to `f`.
    pub fn new(f: impl Fn(Progress<'_>) + Send + Sync + 'static) -> Self {
        ProgressHook(Arc::new(f))
    }

    /// Tells the hook.
    pub fn report(&self, p: Progress<'_>) {
        (self.0)(p)
    }
}

impl std::fmt::Debug for ProgressHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHook")
    }
}
