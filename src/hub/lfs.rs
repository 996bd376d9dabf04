//! Git LFS transfers to the Hub, as `huggingface_hub/lfs.py` makes them without Xet: one batch
//! call names the objects by sha256 and size; the server answers, per object, nothing (it has it
//! already: skip, which is what makes a re-run resume), an error, or an `upload` action (a basic
//! PUT, or multipart: `chunk_size` plus one presigned URL per part, then a completion POST with the
//! parts' ETags) and an optional `verify` action. Bodies stream from the file; nothing holds a
//! whole shard in memory. Bytes are counted as a body is read, for the upload progress bar.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use crate::progress::{Progress, ProgressHook};
use serde::Deserialize;
use serde_json::{json, Value};

use super::http::Client;
use crate::error::{Error, Result};

/// Multipart parts in flight at once (`huggingface_hub` uploads files on 5 threads).
const PARALLEL_PARTS: usize = 4;

/// The media type of the LFS batch API.
const LFS_JSON: &str = "application/vnd.git-lfs+json";

/// A local file to store as an LFS object.
#[derive(Debug, Clone)]
pub struct LfsObject {
    /// The file on disk.
    pub local: PathBuf,
    /// sha256 of its bytes, hex.
    pub oid: String,
    /// Its length.
    pub size: u64,
}

/// What one batch of transfers did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Transferred {
    /// Objects sent.
    pub uploaded: usize,
    /// Objects the server already had.
    pub skipped: usize,
    /// Bytes sent.
    pub bytes: u64,
}

impl std::ops::AddAssign for Transferred {
    fn add_assign(&mut self, o: Self) {
        self.uploaded += o.uploaded;
        self.skipped += o.skipped;
        self.bytes += o.bytes;
    }
}

#[derive(Debug, Deserialize)]
struct BatchAnswer {
    objects: Vec<BatchObject>,
}

#[derive(Debug, Deserialize)]
struct BatchObject {
    oid: String,
    #[serde(default)]
    actions: Option<Actions>,
    #[serde(default)]
    error: Option<BatchError>,
}

#[derive(Debug, Deserialize)]
struct Actions {
    upload: Option<Action>,
    verify: Option<Action>,
}

#[derive(Debug, Deserialize)]
struct Action {
    href: String,
    #[serde(default)]
    header: serde_json::Map<String, Value>,
}

#[derive(Debug, Deserialize)]
struct BatchError {
    code: i64,
    message: String,
}

/// Upload progress: bytes sent of the bytes to send so far (the total grows as batches name
/// what the server lacks), reported to the caller's hook.
pub struct UploadMeter {
    hook: ProgressHook,
    done: AtomicU64,
    total: AtomicU64,
}

impl UploadMeter {
    /// A meter reporting to `hook`.
    pub fn new(hook: ProgressHook) -> Self {
        UploadMeter {
            hook,
            done: AtomicU64::new(0),
            total: AtomicU64::new(0),
        }
    }

    fn report(&self) {
        self.hook.report(Progress::Uploading {
            done: self.done.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
        });
    }

    /// More bytes to send.
    pub fn grow(&self, n: u64) {
        self.total.fetch_add(n, Ordering::Relaxed);
        self.report();
    }

    /// Bytes sent.
    pub fn inc(&self, n: u64) {
        self.done.fetch_add(n, Ordering::Relaxed);
        self.report();
    }

    /// Bytes of a failed try, to be sent again.
    pub fn take_back(&self, n: u64) {
        let _ = self
            .done
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |d| Some(d.saturating_sub(n)));
        self.report();
    }

    /// The upload is over.
    pub fn finish(&self) {
        self.hook.report(Progress::Finished);
    }

    /// Bytes sent so far.
    #[cfg(test)]
    fn done(&self) -> u64 {
        self.done.load(Ordering::Relaxed)
    }
}

/// A request body that counts its bytes as the HTTP client reads them: into `sent` (this try's
/// count, taken back from the bar if the try fails) and onto the bar.
pub(crate) struct Counting<'a, R> {
    inner: R,
    sent: &'a AtomicU64,
    bar: Option<&'a UploadMeter>,
}

impl<'a, R> Counting<'a, R> {
    pub fn new(inner: R, sent: &'a AtomicU64, bar: Option<&'a UploadMeter>) -> Self {
        Counting { inner, sent, bar }
    }
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.sent.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(b) = self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

/// Uploads `objects` (sha256 known), skipping those the server already stores. `revision` is
/// the branch (`ref` in the batch call), `None` for a pull request, as `huggingface_hub` does.
/// `bar`, when given, grows by what is to be sent and advances as it goes.
pub fn upload(
    c: &Client,
    id: &str,
    revision: Option<&str>,
    objects: &[LfsObject],
    bar: Option<&UploadMeter>,
) -> Result<Transferred> {
    let url = format!("{}/{id}.git/info/lfs/objects/batch", c.endpoint);
    let mut done = Transferred::default();
    for chunk in objects.chunks(256) {
        let mut body = json!({
            "operation": "upload",
            "transfers": ["basic", "multipart"],
            "objects": chunk.iter().map(|o| json!({"oid": o.oid, "size": o.size})).collect::<Vec<_>>(),
            "hash_algo": "sha256",
        });
        if let Some(rev) = revision {
            body["ref"] = json!({"name": rev});
        }
        let r = c.post_json_raw("lfs batch", &url, LFS_JSON, &body)?;
        let r = c.check("lfs batch", r)?;
        let answer: BatchAnswer = c.json("lfs batch", r)?;
        if let Some(b) = bar {
            let to_send: u64 = chunk
                .iter()
                .filter(|o| {
                    answer.objects.iter().any(|a| {
                        a.oid == o.oid && a.error.is_none() && a.actions.as_ref().is_some_and(|x| x.upload.is_some())
                    })
                })
                .map(|o| o.size)
                .sum();
            b.grow(to_send);
        }
        for obj in chunk {
            let Some(a) = answer.objects.iter().find(|a| a.oid == obj.oid) else {
                return Err(c.protocol("lfs batch", format!("no answer for object {}", obj.oid)));
            };
            if let Some(e) = &a.error {
                return Err(c.protocol(
                    "lfs batch",
                    format!(
                        "object {} ({}): error {}: {}",
                        obj.oid,
                        obj.local.display(),
                        e.code,
                        e.message
                    ),
                ));
            }
            match a.actions.as_ref().and_then(|x| x.upload.as_ref()) {
                None => done.skipped += 1,
                Some(up) => {
                    transfer(c, obj, up, bar)?;
                    if let Some(v) = a.actions.as_ref().and_then(|x| x.verify.as_ref()) {
                        verify(c, obj, v)?;
                    }
                    done.uploaded += 1;
                    done.bytes += obj.size;
                }
            }
        }
    }
    Ok(done)
}

/// Sends one object: multipart when the action carries `chunk_size`, else one PUT.
fn transfer(c: &Client, obj: &LfsObject, up: &Action, bar: Option<&UploadMeter>) -> Result<()> {
    let Some(chunk) = up.header.get("chunk_size") else {
        put_range(c, &up.href, &obj.local, 0, obj.size, bar)?;
        return Ok(());
    };
    let chunk_size = match chunk {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
    .filter(|&n| n > 0)
    .ok_or_else(|| {
        c.protocol(
            "lfs multipart",
            format!("chunk_size `{chunk}` is not a positive integer"),
        )
    })?;
    let mut parts: Vec<(u64, &str)> = Vec::new();
    for (k, v) in &up.header {
        if let (Ok(n), Some(href)) = (k.parse::<u64>(), v.as_str()) {
            parts.push((n, href));
        }
    }
    parts.sort();
    let expected = obj.size.div_ceil(chunk_size);
    if parts.len() as u64 != expected || parts.iter().enumerate().any(|(i, p)| p.0 != i as u64 + 1) {
        return Err(c.protocol(
            "lfs multipart",
            format!(
                "{} part URLs for {} bytes in chunks of {chunk_size}, expected parts 1..={expected}",
                parts.len(),
                obj.size
            ),
        ));
    }
    // Parts go up PARALLEL_PARTS at a time, each streamed from its own file handle; the first
    // error wins and stops the others from taking new parts.
    let next = AtomicUsize::new(0);
    let failed = AtomicBool::new(false);
    let results: Vec<Mutex<Option<Result<String>>>> = parts.iter().map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        for w in 0..PARALLEL_PARTS.min(parts.len()) {
            let (next, failed, results, parts) = (&next, &failed, &results, &parts);
            let spawned = std::thread::Builder::new()
                .name(format!("loraweld.upload.part.{w}"))
                .spawn_scoped(s, move || loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= parts.len() || failed.load(Ordering::Relaxed) {
                        break;
                    }
                    let (n, href) = parts[i];
                    let start = i as u64 * chunk_size;
                    let len = chunk_size.min(obj.size - start);
                    let r = put_range(c, href, &obj.local, start, len, bar).and_then(|etag| {
                        etag.ok_or_else(|| {
                            c.protocol("lfs multipart", format!("part {n} of {}: no ETag", obj.local.display()))
                        })
                    });
                    failed.fetch_or(r.is_err(), Ordering::Relaxed);
                    *results[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                });
            if spawned.is_err() {
                // No thread: the parts left are taken by the workers already running (or by none,
                // which the check below reports).
                break;
            }
        }
    });
    let mut etags = Vec::new();
    for ((n, _), r) in parts.iter().zip(results) {
        match r.into_inner().unwrap_or_else(|p| p.into_inner()) {
            Some(Ok(etag)) => etags.push(json!({"partNumber": n, "etag": etag})),
            Some(Err(e)) => return Err(e),
            None if failed.load(Ordering::Relaxed) => continue,
            None => {
                return Err(Error::Internal(format!(
                    "part {n} of {} was not sent",
                    obj.local.display()
                )))
            }
        }
    }
    if etags.len() != parts.len() {
        return Err(Error::Internal(format!(
            "{}: a part upload failed",
            obj.local.display()
        )));
    }
    // The completion URL is signed: like `huggingface_hub`, send it no token.
    let body = json!({"oid": obj.oid, "parts": etags});
    let bytes = serde_json::to_vec(&body).map_err(|e| Error::Internal(e.to_string()))?;
    let r = c.run("lfs multipart completion", &up.href, |a| {
        a.post(&up.href)
            .header("content-type", "application/vnd.git-lfs+json")
            .header("accept", "application/vnd.git-lfs+json")
            .send(&bytes[..])
    })?;
    c.check("lfs multipart completion", r).map(drop)
}

/// PUTs `len` bytes of `path` from `start` to a presigned URL (no token), streaming from disk;
/// returns the ETag.
fn put_range(
    c: &Client,
    href: &str,
    path: &Path,
    start: u64,
    len: u64,
    bar: Option<&UploadMeter>,
) -> Result<Option<String>> {
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let sent = AtomicU64::new(0);
    let r = c.run("lfs upload", href, |a| {
        // A retry sends the range again: take the failed try's bytes back off the bar.
        let before = sent.swap(0, Ordering::Relaxed);
        if let (Some(b), true) = (bar, before > 0) {
            b.take_back(before);
        }
        f.seek(SeekFrom::Start(start)).map_err(ureq::Error::Io)?;
        let mut body = Counting::new((&f).take(len), &sent, bar);
        a.put(href)
            .header("content-length", len.to_string())
            .send(ureq::SendBody::from_reader(&mut body))
    })?;
    let r = c.check("lfs upload", r)?;
    Ok(r.headers()
        .get("etag")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .filter(|s| !s.is_empty()))
}

/// `POST verify.href {"oid", "size"}` with the token.
fn verify(c: &Client, obj: &LfsObject, v: &Action) -> Result<()> {
    let auth = c.auth_header();
    let bytes =
        serde_json::to_vec(&json!({"oid": obj.oid, "size": obj.size})).map_err(|e| Error::Internal(e.to_string()))?;
    let r = c.run("lfs verify", &v.href, |a| {
        let mut rq = a
            .post(&v.href)
            .header("content-type", LFS_JSON)
            .header("accept", LFS_JSON);
        if let Some(h) = &auth {
            rq = rq.header("authorization", h);
        }
        rq.send(&bytes[..])
    })?;
    c.check("lfs verify", r).map(drop)
}

/// sha256 and length of a file, read in 8 MiB blocks.
pub fn sha256_file(path: &Path) -> Result<(String, u64)> {
    use sha2::Digest;
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 8 << 20];
    let mut n_bytes = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        n_bytes += n as u64;
    }
    Ok((super::protocol::hex(&h.finalize()), n_bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_a_file() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        std::fs::write(&p, b"abc").unwrap();
        let (oid, n) = sha256_file(&p).unwrap();
        assert_eq!(oid, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(n, 3);
    }

    #[test]
    fn the_counting_reader_adds_up_to_what_was_read() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("f");
        let bytes: Vec<u8> = (0..3_000_001u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&p, &bytes).unwrap();
        let sent = AtomicU64::new(0);
        let bar = UploadMeter::new(ProgressHook::new(|_| {}));
        bar.grow(bytes.len() as u64);
        let f = File::open(&p).unwrap();
        let mut r = Counting::new(&f, &sent, Some(&bar));
        // Small reads, as the HTTP client makes them: every byte counted once.
        let mut buf = [0u8; 4096];
        let mut got = Vec::new();
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got, bytes);
        assert_eq!(sent.load(Ordering::Relaxed), bytes.len() as u64);
        assert_eq!(bar.done(), bytes.len() as u64);
        bar.take_back(100);
        assert_eq!(bar.done(), bytes.len() as u64 - 100, "a failed try's bytes come off");
        // A range of the file (a multipart part) counts only its own bytes.
        let sent = AtomicU64::new(0);
        let mut f = File::open(&p).unwrap();
        f.seek(SeekFrom::Start(1_000_000)).unwrap();
        let n = std::io::copy(
            &mut Counting::new((&f).take(1_000_000), &sent, None),
            &mut std::io::sink(),
        )
        .unwrap();
        assert_eq!((n, sent.load(Ordering::Relaxed)), (1_000_000, 1_000_000));
    }
}
