//! The output-format seam: a [`FileFormat`] decides which tensors share a file, what the files
//! are called and how each is laid out (the head bytes before the data, where every tensor's
//! bytes go, the file's length); an [`OutputFile`] writes one planned file front to back,
//! placing each tensor's bytes at its planned offset (zeros between, where a format aligns),
//! hashing as it goes, and finishing it (or, for a file whose tensors arrive in another file's
//! order, writes each piece where it belongs and hashes the file once it is whole). The plan asks the format; the packer writes through
//! `OutputFile`, whatever the format. Sharded safetensors ([`Safetensors`]) is the first
//! format; GGUF (one file, its own header, alignment and block-quantized tensor types) is next.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use crossbeam_channel::Sender;

use super::shard::{AlignedBuf, ShardResult, ShardWriter};
use crate::error::{Error, Result};
use crate::format::safetensors::{self, Dtype, LayoutEntry};

/// A tensor as a format sees it when laying out files.
#[derive(Debug, Clone, Copy)]
pub struct TensorSpec<'a> {
    /// Name in the file.
    pub name: &'a str,
    /// Its encoding in the file (a safetensors dtype today).
    pub dtype: Dtype,
    /// Shape.
    pub shape: &'a [u64],
    /// Bytes of data.
    pub nbytes: u64,
}

/// One file, laid out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileLayout {
    /// Tensor indices (into the list given to the format) in file order.
    pub tensors: Vec<usize>,
    /// The bytes before the first tensor.
    pub head: Vec<u8>,
    /// Each tensor's absolute offset in the file, in file order.
    pub offsets: Vec<u64>,
    /// The file's length.
    pub len: u64,
}

/// One output file.
#[derive(Debug, Clone)]
pub struct PlannedFile {
    /// File name.
    pub file_name: String,
    /// Indices of its tensors (in the plan's list), in file order.
    pub tensors: Vec<usize>,
    /// The bytes before the first tensor (safetensors: 8-byte length + padded JSON).
    pub head: Vec<u8>,
    /// Total file bytes.
    pub file_len: u64,
    /// Already written and verified by an earlier, interrupted run: do not write again.
    pub skip: bool,
    /// Written in lockstep with this earlier file (the same tensors from the same inputs,
    /// encoded differently): one read of the inputs serves both.
    pub follows: Option<usize>,
    /// Its tensors come in the order of the file it follows, not its own: each piece is written
    /// at its offset, and the file is hashed once whole.
    pub scattered: bool,
}

/// An output file format.
pub trait FileFormat {
    /// Groups the tensors (in the order given) into files, and lays each out; returns them
    /// with their names.
    fn files(&self, tensors: &[TensorSpec<'_>]) -> Vec<(String, FileLayout)>;
    /// The name of the index that maps tensors to files, when the format has one for `files`
    /// files (safetensors: only when sharded).
    fn index_name(&self, files: usize) -> Option<String>;
}

/// Sharded safetensors as transformers and huggingface_hub write them: huggingface_hub's
/// greedy split (a tensor above the limit gets a file of its own), `stem-0000i-of-0000n`
/// names (`stem.variant-…` with a variant), each file in the safetensors crate's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Safetensors {
    /// Largest shard in bytes.
    pub max_shard_size: u64,
    /// `model` or `adapter_model`.
    pub stem: String,
    /// Weight-file variant.
    pub variant: Option<String>,
}

impl Safetensors {
    /// huggingface_hub's `split_state_dict_into_shards_factory`: a tensor above the limit gets
    /// its own shard at once; otherwise the current shard closes when it would overflow.
    fn split(&self, tensors: &[TensorSpec<'_>]) -> Vec<Vec<usize>> {
        let mut groups: Vec<Vec<usize>> = Vec::new();
        let mut cur: Vec<usize> = Vec::new();
        let mut cur_size = 0u64;
        for (i, t) in tensors.iter().enumerate() {
            if t.nbytes > self.max_shard_size {
                groups.push(vec![i]);
                continue;
            }
            if cur_size + t.nbytes > self.max_shard_size {
                groups.push(std::mem::take(&mut cur));
                cur_size = 0;
            }
            cur.push(i);
            cur_size += t.nbytes;
        }
        if !cur.is_empty() || groups.is_empty() {
            groups.push(cur);
        }
        groups
    }

    fn base_name(&self) -> String {
        match &self.variant {
            Some(v) => format!("{}.{v}", self.stem),
            None => self.stem.clone(),
        }
    }
}

impl FileFormat for Safetensors {
    fn files(&self, tensors: &[TensorSpec<'_>]) -> Vec<(String, FileLayout)> {
        let groups = self.split(tensors);
        let n = groups.len();
        let base = self.base_name();
        groups
            .into_iter()
            .enumerate()
            .map(|(si, g)| {
                let entries: Vec<LayoutEntry<'_>> = g
                    .iter()
                    .map(|&i| LayoutEntry {
                        name: tensors[i].name,
                        dtype: tensors[i].dtype,
                        shape: tensors[i].shape,
                        nbytes: tensors[i].nbytes,
                    })
                    .collect();
                let order = safetensors::file_order(&entries);
                let ordered: Vec<LayoutEntry<'_>> = order.iter().map(|&k| entries[k].clone()).collect();
                let (head, offsets) = safetensors::lay_out(&ordered);
                let len = head.len() as u64 + ordered.iter().map(|e| e.nbytes).sum::<u64>();
                let name = if n == 1 {
                    format!("{base}.safetensors")
                } else {
                    format!("{base}-{:05}-of-{n:05}.safetensors", si + 1)
                };
                let layout = FileLayout {
                    tensors: order.iter().map(|&k| g[k]).collect(),
                    head,
                    offsets,
                    len,
                };
                (name, layout)
            })
            .collect()
    }

    fn index_name(&self, files: usize) -> Option<String> {
        (files > 1).then(|| match &self.variant {
            Some(v) => format!("{}.safetensors.index.{v}.json", self.stem),
            None => format!("{}.safetensors.index.json", self.stem),
        })
    }
}

/// The hashes a file gets as its bytes go by: blake3 always, sha256 when pushing (the Hub's LFS
/// object id, computed here instead of reading the file back).
struct Digests {
    blake3: blake3::Hasher,
    sha256: Option<sha2::Sha256>,
}

impl Digests {
    fn new(sha256: bool) -> Self {
        use sha2::Digest;
        Digests {
            blake3: blake3::Hasher::new(),
            sha256: sha256.then(sha2::Sha256::new),
        }
    }

    fn update(&mut self, data: &[u8]) {
        use sha2::Digest;
        self.blake3.update(data);
        if let Some(s) = &mut self.sha256 {
            s.update(data);
        }
    }
}

/// How the packer writes files: hashing, cloning and progress, the same for every file.
#[derive(Clone, Copy)]
pub struct OutputOptions<'a> {
    /// Also compute each file's sha256.
    pub sha256: bool,
    /// Force or forbid `copy_file_range` clones (`None`: as the filesystem suggests).
    pub copy_file_range: Option<bool>,
    /// Bytes written so far, for a progress bar.
    pub progress: Option<&'a AtomicU64>,
}

/// Where a file's bytes go: a stream, front to back (hashed on the way), or a file written at
/// any offset (hashed when finished).
enum Sink {
    Stream(ShardWriter),
    Scattered {
        file: std::fs::File,
        path: std::path::PathBuf,
        /// Bytes that will be written: the head and every tensor (the gaps are zeros already).
        want: u64,
    },
}

/// One planned file being written.
pub struct OutputFile<'a> {
    name: String,
    sink: Sink,
    digests: Digests,
    pos: u64,
    len: u64,
    opts: OutputOptions<'a>,
}

impl<'a> OutputFile<'a> {
    /// Creates `dir/name` and writes the head; the file will be `len` bytes. Written buffers
    /// go back through `recycle`.
    pub fn begin(
        dir: &Path,
        name: &str,
        head: &[u8],
        len: u64,
        recycle: Sender<AlignedBuf>,
        opts: OutputOptions<'a>,
    ) -> Result<Self> {
        let mut writer = ShardWriter::create_with(&dir.join(name), true, Some(recycle))?;
        writer.set_clone(opts.copy_file_range);
        Self::start(name, Sink::Stream(writer), head, len, opts)
    }

    /// The file with its sink, its head written.
    fn start(name: &str, sink: Sink, head: &[u8], len: u64, opts: OutputOptions<'a>) -> Result<Self> {
        let mut f = OutputFile {
            name: name.to_string(),
            sink,
            digests: Digests::new(opts.sha256),
            pos: 0,
            len,
            opts,
        };
        f.put(0, head)?;
        Ok(f)
    }

    /// Creates `dir/name`, `len` bytes of zeros but for the head, for pieces (`data` bytes in
    /// all) that come in any order (through the page cache: they are not page-aligned runs).
    pub fn begin_scattered(
        dir: &Path,
        name: &str,
        head: &[u8],
        len: u64,
        data: u64,
        opts: OutputOptions<'a>,
    ) -> Result<Self> {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| Error::io(&path, e))?;
        file.set_len(len).map_err(|e| Error::io(&path, e))?;
        let want = head.len() as u64 + data;
        Self::start(name, Sink::Scattered { file, path, want }, head, len, opts)
    }

    fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<bool> {
        use std::os::unix::fs::FileExt;
        let Sink::Scattered { file, path, .. } = &self.sink else {
            return Ok(false);
        };
        if offset + data.len() as u64 > self.len {
            return Err(Error::Internal(format!(
                "{}: bytes planned at {offset}..{}, past its {} bytes",
                self.name,
                offset + data.len() as u64,
                self.len
            )));
        }
        file.write_all_at(data, offset).map_err(|e| Error::io(path, e))?;
        self.pos += data.len() as u64;
        if let Some(p) = self.opts.progress {
            p.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
        Ok(true)
    }

    /// Zeros up to `offset` (a format's alignment padding); never backwards.
    fn pad_to(&mut self, offset: u64) -> Result<()> {
        if offset < self.pos {
            return Err(Error::Internal(format!(
                "{}: bytes planned at {offset}, but {} are written",
                self.name, self.pos
            )));
        }
        if offset > self.pos {
            let zeros = vec![0u8; (offset - self.pos) as usize];
            self.stream()?.write(&zeros)?;
            self.digests.update(&zeros);
            self.pos = offset;
        }
        Ok(())
    }

    fn advance(&mut self, data: &[u8]) {
        self.digests.update(data);
        self.pos += data.len() as u64;
        if let Some(p) = self.opts.progress {
            p.fetch_add(data.len() as u64, Ordering::Relaxed);
        }
    }

    /// Writes `data` at `offset`.
    pub fn put(&mut self, offset: u64, data: &[u8]) -> Result<()> {
        if self.write_at(offset, data)? {
            return Ok(());
        }
        self.pad_to(offset)?;
        self.stream()?.write(data)?;
        self.advance(data);
        Ok(())
    }

    /// Writes `data`, which sits at `abs` in `src`, at `offset`: cloned with `copy_file_range`
    /// where the filesystem shares blocks, else copied.
    pub fn put_from(&mut self, offset: u64, src: &std::fs::File, abs: u64, data: &[u8]) -> Result<()> {
        if self.write_at(offset, data)? {
            return Ok(());
        }
        self.pad_to(offset)?;
        self.stream()?.write_from(src, abs, data)?;
        self.advance(data);
        Ok(())
    }

    /// Writes `buf[lead..lead + len]` at `offset` without copying it (the buffer was placed so
    /// its bytes have the in-page offset they have in the file); returns the buffer when the
    /// writer is done with it.
    pub fn put_owned(&mut self, offset: u64, buf: AlignedBuf, lead: usize, len: usize) -> Result<Option<AlignedBuf>> {
        if self.write_at(offset, &buf.as_slice()[lead..lead + len])? {
            return Ok(Some(buf));
        }
        self.pad_to(offset)?;
        self.digests.update(&buf.as_slice()[lead..lead + len]);
        self.pos += len as u64;
        if let Some(p) = self.opts.progress {
            p.fetch_add(len as u64, Ordering::Relaxed);
        }
        self.stream()?.write_owned(buf, lead, len)
    }

    fn stream(&mut self) -> Result<&mut ShardWriter> {
        match &mut self.sink {
            Sink::Stream(w) => Ok(w),
            Sink::Scattered { .. } => Err(Error::Internal(format!("{}: streamed into a scattered file", self.name))),
        }
    }

    /// Pads to the planned length, syncs, and checks the file is exactly as planned.
    pub fn finish(mut self) -> Result<ShardResult> {
        let len = self.len;
        let (on_disk, cloned_bytes) = match self.sink {
            Sink::Stream(_) => {
                self.pad_to(len)?;
                let Sink::Stream(w) = self.sink else {
                    return Err(Error::Internal("unreachable sink".into()));
                };
                let cloned = w.cloned_bytes();
                (w.finish()?, cloned)
            }
            Sink::Scattered { file, path, want } => {
                if self.pos != want {
                    return Err(Error::Internal(format!(
                        "{}: {} bytes written of {want} planned",
                        self.name, self.pos
                    )));
                }
                // Every piece is in place: sync, then hash the whole file front to back.
                file.sync_data().map_err(|e| Error::io(&path, e))?;
                let on_disk = hash_back(&file, &path, &mut self.digests)?;
                crate::sys::drop_cache(&file);
                (on_disk, 0)
            }
        };
        if on_disk != len {
            return Err(Error::Internal(format!(
                "{}: file is {on_disk} bytes, planned {len}",
                self.name
            )));
        }
        Ok(ShardResult {
            file: self.name,
            bytes: len,
            blake3: self.digests.blake3.finalize().to_hex().to_string(),
            sha256: self.digests.sha256.map(|x| {
                use sha2::Digest;
                x.finalize().iter().map(|b| format!("{b:02x}")).collect()
            }),
            cloned_bytes,
        })
    }
}

/// Feeds a finished file to the digests, front to back; returns its length.
fn hash_back(file: &std::fs::File, path: &Path, digests: &mut Digests) -> Result<u64> {
    use std::os::unix::fs::FileExt;
    let mut buf = vec![0u8; 8 << 20];
    let mut at = 0u64;
    loop {
        let n = file.read_at(&mut buf, at).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            return Ok(at);
        }
        digests.update(&buf[..n]);
        at += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec<'a>(name: &'a str, dtype: Dtype, shape: &'a [u64]) -> TensorSpec<'a> {
        TensorSpec {
            name,
            dtype,
            shape,
            nbytes: shape.iter().product::<u64>() * dtype.bits() / 8,
        }
    }

    /// huggingface_hub's split: `[a(1), BIG(10), b(1)]` with a limit of 5 bytes → `[BIG], [a, b]`.
    #[test]
    fn safetensors_splits_as_huggingface_hub() {
        let f = Safetensors {
            max_shard_size: 5,
            stem: "model".into(),
            variant: None,
        };
        let t = [
            spec("a", Dtype::U8, &[1]),
            spec("big", Dtype::U8, &[10]),
            spec("b", Dtype::U8, &[1]),
        ];
        let files = f.files(&t);
        let names: Vec<&str> = files.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]);
        assert_eq!(files[0].1.tensors, [1]);
        assert_eq!(files[1].1.tensors, [0, 2]);
        assert_eq!(f.index_name(2).as_deref(), Some("model.safetensors.index.json"));
        let v = Safetensors {
            variant: Some("v2".into()),
            max_shard_size: 100,
            ..f
        };
        assert_eq!(v.files(&t)[0].0, "model.v2.safetensors");
        assert_eq!(v.index_name(1), None);
    }

    /// A file written through `OutputFile` is its head, each tensor at its offset (zeros in
    /// any gap), and exactly the planned length; the digest is the file's blake3.
    #[test]
    fn output_file_places_bytes_at_planned_offsets() {
        let d = tempfile::tempdir().unwrap();
        let (tx, _rx) = crossbeam_channel::unbounded();
        let opts = OutputOptions {
            sha256: true,
            copy_file_range: None,
            progress: None,
        };
        let mut f = OutputFile::begin(d.path(), "x.bin", b"HEAD", 16, tx, opts).unwrap();
        f.put(4, b"abc").unwrap();
        f.put(8, b"defg").unwrap();
        assert!(f.put(9, b"z").is_err(), "never backwards");
        let r = f.finish().unwrap();
        let bytes = std::fs::read(d.path().join("x.bin")).unwrap();
        assert_eq!(bytes, b"HEADabc\0defg\0\0\0\0");
        assert_eq!(r.bytes, 16);
        assert_eq!(r.blake3, blake3::hash(&bytes).to_hex().to_string());
        assert_eq!(r.sha256.unwrap().len(), 64);
    }

    #[test]
    fn a_scattered_file_comes_out_as_the_streamed_one() {
        let d = tempfile::tempdir().unwrap();
        let opts = OutputOptions {
            sha256: true,
            copy_file_range: None,
            progress: None,
        };
        let mut f = OutputFile::begin_scattered(d.path(), "x.bin", b"HEAD", 16, 7, opts).unwrap();
        f.put(8, b"defg").unwrap();
        f.put(4, b"abc").unwrap();
        assert!(f.put(14, b"xyz").is_err(), "past the planned length");
        let r = f.finish().unwrap();
        let bytes = std::fs::read(d.path().join("x.bin")).unwrap();
        assert_eq!(bytes, b"HEADabc\0defg\0\0\0\0");
        assert_eq!(r.blake3, blake3::hash(&bytes).to_hex().to_string());
        use sha2::Digest;
        let sha: String = sha2::Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(r.sha256.unwrap(), sha);

        let mut short = OutputFile::begin_scattered(d.path(), "y.bin", b"HEAD", 16, 7, opts).unwrap();
        short.put(4, b"abc").unwrap();
        assert!(short.finish().is_err(), "a piece never came");
    }
}
