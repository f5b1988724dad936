//! The content-addressed feature cache. The frozen part of a backbone is a pure function of
//! (weights, architecture, freeze layer, input pixels, preprocessing, dtype), so its outputs are
//! stored once under a key hashed from exactly those, and reused by every later run and every
//! point of a sweep. Files are safetensors (`features` f32, `labels` i64, and `index` u64: each
//! row's position in its dataset) with the full key and a SHA-256 of the payload in their
//! metadata; a file whose key or checksum does not match is rebuilt, never trusted.
//!
//! Entries are streamed to disk as extraction runs (`EntryWriter`: rows appended, header last,
//! temp file + rename) and read in place (`Entry`: memory-mapped, rows copied out a batch at a
//! time), so neither side holds all the features in memory. An entry may be one file or the
//! shards of an extraction split across processes (`NAME.shard-I-of-N.safetensors`), read as
//! one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

// Files are little-endian (safetensors), written and read as plain copies of memory.
#[cfg(target_endian = "big")]
compile_error!("the feature cache and head files assume a little-endian target");

/// Bump when the stored layout or the meaning of features changes.
pub const FORMAT_VERSION: u32 = 2;

/// What identifies a frozen feature set.
#[derive(Debug, Clone)]
pub struct CacheKey {
    pub weights: String,
    pub arch: String,
    pub freeze: String,
    pub data: String,
    pub preprocessing: String,
    pub dtype: String,
}

impl CacheKey {
    /// The full key (hex SHA-256 of every part, with the format version).
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        let text = format!(
            "runner-feature-cache v{FORMAT_VERSION}\nweights={}\narch={}\nfreeze={}\ndata={}\npre={}\ndtype={}\n",
            self.weights, self.arch, self.freeze, self.data, self.preprocessing, self.dtype
        );
        h.update(text.as_bytes());
        format!("{:x}", h.finalize())
    }
}

/// SHA-256 of a file's content, streamed.
pub fn file_hash(path: &Path) -> Result<String> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// [`file_hash`], remembered for the process by (path, size, modification time): the points of
/// a sweep share their weights file (hundreds of MB), which is then hashed once, not per point.
pub fn file_hash_memo(path: &Path) -> Result<String> {
    type Seen = Vec<(PathBuf, u64, Option<SystemTime>, String)>;
    static SEEN: Mutex<Seen> = Mutex::new(Vec::new());
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    let (len, modified) = (meta.len(), meta.modified().ok());
    let same = |e: &&(PathBuf, u64, Option<SystemTime>, String)| {
        e.0 == path && e.1 == len && e.2 == modified
    };
    if let Some(h) = SEEN
        .lock()
        .ok()
        .and_then(|s| s.iter().find(same).map(|e| e.3.clone()))
    {
        return Ok(h);
    }
    let h = file_hash(path)?;
    if let Ok(mut s) = SEEN.lock() {
        s.retain(|e| e.0 != path);
        s.push((path.to_path_buf(), len, modified, h.clone()));
    }
    Ok(h)
}

/// Whether the last feature set read or computed stays in memory (see [`remembered`]).
static KEEP: AtomicBool = AtomicBool::new(false);
type Kept = Option<(String, Arc<Features>)>;
static LAST: Mutex<Kept> = Mutex::new(None);

/// Keep the last feature set in memory for this process (on for a sweep that runs several
/// points in one process: they share their features, which are then read and checked once,
/// not once per point). Off drops what is kept.
pub fn keep_last_in_memory(on: bool) {
    KEEP.store(on, Ordering::Relaxed);
    if !on {
        if let Ok(mut l) = LAST.lock() {
            *l = None;
        }
    }
}

/// Whether the last feature set is kept in memory.
pub fn keeping() -> bool {
    KEEP.load(Ordering::Relaxed)
}

/// The features kept in memory under `digest`, if any.
pub fn remembered(digest: &str) -> Option<Arc<Features>> {
    if !KEEP.load(Ordering::Relaxed) {
        return None;
    }
    let l = LAST.lock().ok()?;
    l.as_ref()
        .filter(|(d, _)| d == digest)
        .map(|(_, f)| f.clone())
}

/// Keep `f` as the features under `digest` (when keeping is on).
pub fn remember(digest: &str, f: &Arc<Features>) {
    if KEEP.load(Ordering::Relaxed) {
        if let Ok(mut l) = LAST.lock() {
            *l = Some((digest.to_string(), f.clone()));
        }
    }
}

/// Host features: `shape[0]` rows, row-major f32, with each row's label and the position of
/// its sample in the dataset it came from (rows of images that could not be decoded under
/// `dataset.on_bad_image = "skip"` are left out, so positions can skip).
#[derive(Debug, Clone)]
pub struct HostFeatures {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub labels: Vec<i64>,
    pub index: Vec<u64>,
}

/// Where features live: in memory (`run.cache = false`, or a test), or in a cache entry on
/// disk, read a row at a time (a run's resident memory then does not grow with its samples).
#[derive(Debug)]
pub enum Features {
    Memory(HostFeatures),
    Stored(Entry),
}

impl Features {
    pub fn shape(&self) -> &[usize] {
        match self {
            Features::Memory(h) => &h.shape,
            Features::Stored(e) => &e.shape,
        }
    }

    pub fn rows(&self) -> usize {
        self.shape()[0]
    }

    /// Values per row.
    pub fn per_row(&self) -> usize {
        self.shape()[1..].iter().product()
    }

    pub fn labels(&self) -> &[i64] {
        match self {
            Features::Memory(h) => &h.labels,
            Features::Stored(e) => &e.labels,
        }
    }

    /// Each row's position in its dataset.
    pub fn index(&self) -> &[u64] {
        match self {
            Features::Memory(h) => &h.index,
            Features::Stored(e) => &e.index,
        }
    }

    /// Append rows `rows` (in that order) to `out`.
    pub fn gather_into(&self, rows: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let per = self.per_row();
        out.reserve(rows.len() * per);
        match self {
            Features::Memory(h) => {
                for &r in rows {
                    let row = h.data.get(r * per..(r + 1) * per).ok_or_else(|| {
                        Error::Other(format!(
                            "feature row {r} is outside the {} rows",
                            h.shape[0]
                        ))
                    })?;
                    out.extend_from_slice(row);
                }
                Ok(())
            }
            Features::Stored(e) => e.gather_into(rows, out),
        }
    }

    /// Every row in memory (for `runner extract`-style consumers and tests).
    pub fn to_host(&self) -> Result<HostFeatures> {
        match self {
            Features::Memory(h) => Ok(h.clone()),
            Features::Stored(e) => {
                let all: Vec<usize> = (0..e.rows).collect();
                let mut data = Vec::new();
                e.gather_into(&all, &mut data)?;
                Ok(HostFeatures {
                    shape: e.shape.clone(),
                    data,
                    labels: e.labels.clone(),
                    index: e.index.clone(),
                })
            }
        }
    }
}

/// Where the payload of every entry file starts: the safetensors header is padded with spaces
/// up to here, so the header can be written last (after rows of unknown count were streamed)
/// and rows are aligned for reading in place.
const DATA_START: u64 = 4096;

/// One file of an entry: rows `first_row..first_row + rows` of the whole.
#[derive(Debug)]
struct Segment {
    path: PathBuf,
    first_row: usize,
    rows: usize,
    back: Backing,
}

#[derive(Debug)]
enum Backing {
    /// The payload mapped into memory (pages are the kernel's page cache, not the process's).
    Map(memmap2::Mmap),
    /// Where mapping failed (e.g. an address-space limit under `ulimit -v`): positioned reads.
    Read(std::fs::File),
}

/// A cache entry opened for reading: one file, or the shards of a sharded extraction read as
/// one. Labels and positions are in memory (16 bytes a row); feature rows stay on disk.
#[derive(Debug)]
pub struct Entry {
    segs: Vec<Segment>,
    pub shape: Vec<usize>,
    pub labels: Vec<i64>,
    pub index: Vec<u64>,
    per: usize,
    rows: usize,
}

impl Entry {
    /// Paths of the files holding the entry.
    pub fn paths(&self) -> Vec<&Path> {
        self.segs.iter().map(|s| s.path.as_path()).collect()
    }

    /// Append rows `rows` to `out`: straight from the mapped pages (no zeroed buffer in
    /// between: a head step copies each of its rows once, as an in-memory gather does).
    fn gather_into(&self, rows: &[usize], out: &mut Vec<f32>) -> Result<()> {
        let row_bytes = self.per * 4;
        for &r in rows {
            let k = self.segs.partition_point(|s| s.first_row + s.rows <= r);
            let seg = self
                .segs
                .get(k)
                .filter(|s| r >= s.first_row)
                .ok_or_else(|| {
                    Error::Other(format!(
                        "feature row {r} is outside the entry's {} rows",
                        self.rows
                    ))
                })?;
            let off = DATA_START as usize + (r - seg.first_row) * row_bytes;
            match &seg.back {
                Backing::Map(m) => {
                    let bytes = &m[off..off + row_bytes];
                    match bytemuck::try_cast_slice::<u8, f32>(bytes) {
                        Ok(vals) => out.extend_from_slice(vals),
                        Err(_) => {
                            let at = out.len();
                            out.resize(at + self.per, 0.0);
                            bytemuck::cast_slice_mut(&mut out[at..]).copy_from_slice(bytes);
                        }
                    }
                }
                Backing::Read(f) => {
                    use std::os::unix::fs::FileExt;
                    let at = out.len();
                    out.resize(at + self.per, 0.0);
                    f.read_exact_at(bytemuck::cast_slice_mut(&mut out[at..]), off as u64)
                        .map_err(|e| Error::io(&seg.path, e))?
                }
            }
        }
        Ok(())
    }
}

/// The parsed header of one entry file.
struct FileHeader {
    meta: HashMap<String, String>,
    shape: Vec<usize>,
    /// Byte ranges (from `DATA_START`) of features, labels and positions.
    ranges: [(u64, u64); 3],
}

fn read_header(file: &std::fs::File) -> std::result::Result<FileHeader, String> {
    use std::os::unix::fs::FileExt;
    let mut head = vec![0u8; DATA_START as usize];
    file.read_exact_at(&mut head, 0)
        .map_err(|e| format!("header: {e}"))?;
    let n = u64::from_le_bytes(head[..8].try_into().unwrap_or_default());
    if n != DATA_START - 8 {
        return Err(format!(
            "header length {n}, expected {} (an entry of another format)",
            DATA_START - 8
        ));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&head[8..]).map_err(|e| format!("header: {e}"))?;
    let meta: HashMap<String, String> = v
        .get("__metadata__")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .unwrap_or_default();
    let tensor =
        |name: &str, dtype: &str| -> std::result::Result<(Vec<usize>, (u64, u64)), String> {
            let t = v.get(name).ok_or_else(|| format!("no tensor {name:?}"))?;
            if t.get("dtype").and_then(|d| d.as_str()) != Some(dtype) {
                return Err(format!("{name}: dtype is not {dtype}"));
            }
            let shape: Vec<usize> = t
                .get("shape")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .ok_or_else(|| format!("{name}: bad shape"))?;
            let off: [u64; 2] = t
                .get("data_offsets")
                .and_then(|s| serde_json::from_value(s.clone()).ok())
                .ok_or_else(|| format!("{name}: bad offsets"))?;
            Ok((shape, (off[0], off[1])))
        };
    let (shape, f) = tensor("features", "F32")?;
    let (ls, l) = tensor("labels", "I64")?;
    let (is, i) = tensor("index", "U64")?;
    let rows = *shape.first().ok_or("features have no rows dimension")?;
    let per = shape[1..]
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d as u64))
        .ok_or("features shape overflows")?;
    let fbytes = (rows as u64)
        .checked_mul(per)
        .and_then(|x| x.checked_mul(4))
        .ok_or("features shape overflows")?;
    let r8 = (rows as u64).checked_mul(8).ok_or("row count overflows")?;
    let expect_len = (rows as u64)
        .checked_mul(16)
        .and_then(|x| x.checked_add(fbytes))
        .and_then(|x| x.checked_add(DATA_START))
        .ok_or("sizes overflow")?;
    if ls != [rows]
        || is != [rows]
        || f != (0, fbytes)
        || l != (fbytes, fbytes + r8)
        || i != (fbytes + r8, fbytes + 2 * r8)
    {
        return Err("tensor offsets or shapes do not fit together".into());
    }
    let len = file.metadata().map_err(|e| e.to_string())?.len();
    if len != expect_len {
        return Err(format!(
            "{len} bytes, the header describes {expect_len} (truncated?)"
        ));
    }
    Ok(FileHeader {
        meta,
        shape,
        ranges: [f, l, i],
    })
}

/// SHA-256 of a file's bytes `from..to`, read in blocks (the mapping is not touched, so a
/// check does not make the file's pages count as this process's memory).
fn range_checksum(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 4 << 20];
    let mut at = from;
    while at < to {
        let k = ((to - at) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..k], at)?;
        h.update(&buf[..k]);
        at += k as u64;
    }
    Ok(format!("{:x}", h.finalize()))
}

/// Open one entry file: header, key, checksum (unless `verify` is false: a file this process
/// has just written, whose checksum it computed from the rows), labels and positions.
fn open_file(
    path: &Path,
    digest: &str,
    verify: bool,
) -> std::result::Result<(FileHeader, Segment, Vec<i64>, Vec<u64>), Miss> {
    use std::os::unix::fs::FileExt;
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
        Err(e) => return Err(Miss::Corrupt(format!("{}: {e}", path.display()))),
    };
    let corrupt = |m: String| Miss::Corrupt(format!("{}: {m}", path.display()));
    let h = read_header(&file).map_err(corrupt)?;
    if h.meta.get("key").map(String::as_str) != Some(digest) {
        return Err(corrupt("key mismatch".into()));
    }
    // checked on every open (the points of a sweep in one process share the opened entry)
    if verify {
        let len = file.metadata().map_err(|e| corrupt(e.to_string()))?.len();
        let sum = range_checksum(&file, DATA_START, len).map_err(|e| corrupt(e.to_string()))?;
        if h.meta.get("checksum") != Some(&sum) {
            return Err(corrupt("checksum mismatch".into()));
        }
    }
    let rows = h.shape[0];
    let mut lb = vec![0i64; rows];
    let mut ib = vec![0u64; rows];
    file.read_exact_at(
        bytemuck::cast_slice_mut(&mut lb),
        DATA_START + h.ranges[1].0,
    )
    .and_then(|_| {
        file.read_exact_at(
            bytemuck::cast_slice_mut(&mut ib),
            DATA_START + h.ranges[2].0,
        )
    })
    .map_err(|e| corrupt(e.to_string()))?;
    // SAFETY: entry files are written once, atomically (temp file + rename), and never changed
    // in place; a file replaced by a rename keeps this mapping's pages. A file truncated by
    // something outside runner would fault on access, as with any memory-mapped reader.
    let back = match unsafe { memmap2::Mmap::map(&file) } {
        Ok(m) => Backing::Map(m),
        Err(e) => {
            tracing::debug!(
                "{}: not mapped ({e}); reading rows from the file",
                path.display()
            );
            Backing::Read(file)
        }
    };
    let seg = Segment {
        path: path.to_path_buf(),
        first_row: 0,
        rows,
        back,
    };
    Ok((h, seg, lb, ib))
}

/// Why a cache file was not used.
#[derive(Debug)]
pub enum Miss {
    Absent,
    Corrupt(String),
}

/// Streams rows into a new entry file (or one shard of an entry): rows are appended as they
/// are computed, the header is written last, and the file appears under its name on `finish`
/// only (temp file + rename), so readers never see a part.
pub struct EntryWriter {
    file: AtomicFile,
    hasher: Sha256,
    tail: Vec<usize>,
    per: usize,
    labels: Vec<i64>,
    index: Vec<u64>,
    meta: HashMap<String, String>,
    dest: PathBuf,
}

use crate::fsio::AtomicFile;

impl EntryWriter {
    fn create(dest: PathBuf, meta: HashMap<String, String>, tail: &[usize]) -> Result<Self> {
        use std::io::Write;
        let mut file = AtomicFile::create(&dest)?;
        let tmp = file.path().to_path_buf();
        file.writer()
            .write_all(&vec![0u8; DATA_START as usize])
            .map_err(|e| Error::io(&tmp, e))?;
        Ok(EntryWriter {
            file,
            hasher: Sha256::new(),
            tail: tail.to_vec(),
            per: tail.iter().product(),
            labels: Vec::new(),
            index: Vec::new(),
            meta,
            dest,
        })
    }

    /// Rows written so far.
    pub fn rows(&self) -> usize {
        self.labels.len()
    }

    /// Append rows (`labels.len()` of them, row-major) with their labels and dataset positions.
    pub fn push(&mut self, rows: &[f32], labels: &[i64], index: &[u64]) -> Result<()> {
        use std::io::Write;
        if rows.len() != labels.len() * self.per || labels.len() != index.len() {
            return Err(Error::Other(format!(
                "cache: {} values, {} labels and {} positions do not make rows of {}",
                rows.len(),
                labels.len(),
                index.len(),
                self.per
            )));
        }
        let b: &[u8] = bytemuck::cast_slice(rows);
        self.hasher.update(b);
        let tmp = self.file.path().to_path_buf();
        self.file
            .writer()
            .write_all(b)
            .map_err(|e| Error::io(&tmp, e))?;
        self.labels.extend_from_slice(labels);
        self.index.extend_from_slice(index);
        Ok(())
    }

    /// Write labels, positions and the header, then put the file in place.
    pub fn finish(mut self) -> Result<PathBuf> {
        use std::io::{Seek, Write};
        let tmp = self.file.path().to_path_buf();
        let io = |e: std::io::Error| Error::io(&tmp, e);
        let (lb, ib): (&[u8], &[u8]) = (
            bytemuck::cast_slice(&self.labels),
            bytemuck::cast_slice(&self.index),
        );
        self.hasher.update(lb);
        self.hasher.update(ib);
        let w = self.file.writer();
        w.write_all(lb).map_err(io)?;
        w.write_all(ib).map_err(io)?;
        let rows = self.labels.len() as u64;
        let f = rows * self.per as u64 * 4;
        let mut meta = self.meta;
        meta.insert("checksum".into(), format!("{:x}", self.hasher.finalize()));
        meta.insert("format".into(), FORMAT_VERSION.to_string());
        let mut shape = vec![rows as usize];
        shape.extend(&self.tail);
        let header = serde_json::json!({
            "__metadata__": meta,
            "features": {"dtype": "F32", "shape": shape, "data_offsets": [0, f]},
            "labels": {"dtype": "I64", "shape": [rows], "data_offsets": [f, f + 8 * rows]},
            "index": {"dtype": "U64", "shape": [rows], "data_offsets": [f + 8 * rows, f + 16 * rows]},
        })
        .to_string();
        let room = (DATA_START - 8) as usize;
        if header.len() > room {
            return Err(Error::Other(format!(
                "cache: the entry header takes {} bytes, more than the {room} reserved",
                header.len()
            )));
        }
        let mut head = Vec::with_capacity(DATA_START as usize);
        head.extend_from_slice(&(room as u64).to_le_bytes());
        head.extend_from_slice(header.as_bytes());
        head.resize(DATA_START as usize, b' ');
        w.seek(std::io::SeekFrom::Start(0)).map_err(io)?;
        w.write_all(&head).map_err(io)?;
        self.file.commit()?;
        Ok(self.dest)
    }
}

#[derive(Debug, Clone)]
pub struct FeatureCache {
    dir: PathBuf,
}

/// Which part of an entry a shard holds: shard `index` of `count`, covering dataset positions
/// `first..first + samples`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardInfo {
    pub index: usize,
    pub count: usize,
    pub first: usize,
    pub samples: usize,
}

impl FeatureCache {
    pub fn new(dir: &Path) -> Self {
        FeatureCache {
            dir: dir.to_path_buf(),
        }
    }

    /// Hold an exclusive lock on an entry while computing it, so concurrent runs (a sweep's
    /// workers, Slurm array tasks on a shared folder) compute it once: the others wait, then
    /// find it. The lock is the kernel's (`flock`), released when the holder exits, crashed or not.
    pub fn lock(&self, digest: &str) -> Result<std::fs::File> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(&self.dir, e))?;
        let p = self
            .dir
            .join(format!("{}.lock", &digest[..32.min(digest.len())]));
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| Error::io(&p, e))?;
        f.lock().map_err(|e| Error::io(&p, e))?;
        Ok(f)
    }

    fn stem(digest: &str) -> &str {
        &digest[..32.min(digest.len())]
    }

    pub fn path_for(&self, digest: &str) -> PathBuf {
        self.dir.join(format!("{}.safetensors", Self::stem(digest)))
    }

    /// The file of shard `index` of `count`.
    pub fn shard_path(&self, digest: &str, index: usize, count: usize) -> PathBuf {
        self.dir.join(format!(
            "{}.shard-{index}-of-{count}.safetensors",
            Self::stem(digest)
        ))
    }

    /// The entry for `digest`, opened for reading rows in place: its file, or else a complete
    /// set of shards (every shard of one count present and intact, together covering the data).
    pub fn open(&self, digest: &str) -> std::result::Result<Entry, Miss> {
        self.open_entry(digest, true)
    }

    /// The entry this process has just written with [`FeatureCache::writer`], opened without
    /// reading it all again for its checksum (computed from the rows as they were written).
    pub fn open_written(&self, digest: &str) -> std::result::Result<Entry, Miss> {
        self.open_entry(digest, false)
    }

    fn open_entry(&self, digest: &str, verify: bool) -> std::result::Result<Entry, Miss> {
        match open_file(&self.path_for(digest), digest, verify) {
            Ok((h, seg, labels, index)) => Ok(Entry {
                per: h.shape[1..].iter().product(),
                rows: seg.rows,
                shape: h.shape,
                segs: vec![seg],
                labels,
                index,
            }),
            Err(Miss::Absent) => self.open_shards(digest),
            Err(e) => Err(e),
        }
    }

    /// The shard counts that have at least one shard file of `digest` here.
    fn shard_counts(&self, digest: &str) -> Vec<usize> {
        let prefix = format!("{}.shard-", Self::stem(digest));
        let mut counts: Vec<usize> = std::fs::read_dir(&self.dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().to_string();
                let rest = name.strip_prefix(&prefix)?.strip_suffix(".safetensors")?;
                rest.split_once("-of-")?.1.parse().ok()
            })
            .collect();
        counts.sort_unstable();
        counts.dedup();
        counts
    }

    fn open_shards(&self, digest: &str) -> std::result::Result<Entry, Miss> {
        let mut last = Miss::Absent;
        for count in self.shard_counts(digest) {
            match self.open_shard_set(digest, count) {
                Ok(e) => return Ok(e),
                Err(m) => last = m,
            }
        }
        Err(last)
    }

    fn open_shard_set(&self, digest: &str, count: usize) -> std::result::Result<Entry, Miss> {
        let (mut segs, mut labels, mut index) = (Vec::new(), Vec::new(), Vec::new());
        let (mut shape, mut next_first, mut rows) = (None::<Vec<usize>>, 0usize, 0usize);
        for i in 0..count {
            let path = self.shard_path(digest, i, count);
            let (h, mut seg, l, ix) = open_file(&path, digest, true)?;
            let bad = |m: &str| Miss::Corrupt(format!("{}: {m}", path.display()));
            let num = |k: &str| h.meta.get(k).and_then(|v| v.parse::<usize>().ok());
            let want = format!("{i}/{count}");
            if h.meta.get("shard") != Some(&want) || num("first") != Some(next_first) {
                return Err(bad("shard metadata does not continue the previous shard"));
            }
            next_first += num("samples").ok_or_else(|| bad("no sample count"))?;
            if shape.as_ref().is_some_and(|s| s[1..] != h.shape[1..]) {
                return Err(bad("row shape differs from the other shards"));
            }
            shape.get_or_insert_with(|| h.shape.clone());
            seg.first_row = rows;
            rows += seg.rows;
            segs.push(seg);
            labels.extend(l);
            index.extend(ix);
        }
        let mut shape = shape.ok_or(Miss::Absent)?;
        shape[0] = rows;
        Ok(Entry {
            per: shape[1..].iter().product(),
            rows,
            shape,
            segs,
            labels,
            index,
        })
    }

    fn meta(digest: &str, key: &CacheKey) -> HashMap<String, String> {
        let mut meta = HashMap::new();
        meta.insert("key".to_string(), digest.to_string());
        meta.insert("arch".to_string(), key.arch.clone());
        meta.insert("freeze".to_string(), key.freeze.clone());
        meta
    }

    /// A writer for the entry `digest` (rows of shape `tail`), put in place by its `finish`.
    pub fn writer(&self, digest: &str, key: &CacheKey, tail: &[usize]) -> Result<EntryWriter> {
        // what writers killed on this host left behind
        crate::fsio::remove_stale_temps(&self.dir);
        EntryWriter::create(self.path_for(digest), Self::meta(digest, key), tail)
    }

    /// A writer for one shard of the entry `digest`.
    pub fn shard_writer(
        &self,
        digest: &str,
        key: &CacheKey,
        tail: &[usize],
        s: ShardInfo,
    ) -> Result<EntryWriter> {
        crate::fsio::remove_stale_temps(&self.dir);
        let mut meta = Self::meta(digest, key);
        meta.insert("shard".into(), format!("{}/{}", s.index, s.count));
        meta.insert("first".into(), s.first.to_string());
        meta.insert("samples".into(), s.samples.to_string());
        EntryWriter::create(self.shard_path(digest, s.index, s.count), meta, tail)
    }

    /// The stored features for `digest` read into memory, if present and intact.
    pub fn get(&self, digest: &str) -> std::result::Result<HostFeatures, Miss> {
        let e = self.open(digest)?;
        Features::Stored(e)
            .to_host()
            .map_err(|e| Miss::Corrupt(e.to_string()))
    }

    /// Store features from memory, atomically.
    pub fn put(&self, digest: &str, key: &CacheKey, f: &HostFeatures) -> Result<PathBuf> {
        let mut w = self.writer(digest, key, &f.shape[1..])?;
        w.push(&f.data, &f.labels, &f.index)?;
        w.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_hashes_follow_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("w.npy");
        std::fs::write(&p, b"first").unwrap();
        let a = file_hash_memo(&p).unwrap();
        assert_eq!(a, file_hash(&p).unwrap());
        assert_eq!(file_hash_memo(&p).unwrap(), a);
        std::fs::write(&p, b"second, longer").unwrap();
        let b = file_hash_memo(&p).unwrap();
        assert_ne!(a, b, "a changed file is hashed again");
        assert_eq!(b, file_hash(&p).unwrap());
    }

    #[test]
    fn features_are_kept_only_while_asked() {
        let f = Arc::new(Features::Memory(HostFeatures {
            shape: vec![1, 2],
            data: vec![1.0, 2.0],
            labels: vec![0],
            index: vec![0],
        }));
        // other tests may toggle keeping; this digest is ours alone
        let d = "test-only-digest-kept";
        keep_last_in_memory(true);
        remember(d, &f);
        let got = remembered(d);
        keep_last_in_memory(false);
        assert!(got.is_some_and(|g| Arc::ptr_eq(&g, &f)));
        assert!(remembered(d).is_none(), "off drops what was kept");
        remember(d, &f);
        assert!(remembered(d).is_none(), "nothing is kept while off");
    }

    #[test]
    fn roundtrip_and_corruption_is_detected() {
        let dir = tempfile::tempdir().unwrap();
        let c = FeatureCache::new(dir.path());
        let key = CacheKey {
            weights: "w".into(),
            arch: "alexnet".into(),
            freeze: "fc7".into(),
            data: "d".into(),
            preprocessing: "tf1".into(),
            dtype: "f32".into(),
        };
        let d = key.digest();
        assert!(matches!(c.get(&d), Err(Miss::Absent)));
        let f = HostFeatures {
            shape: vec![2, 3],
            data: vec![1., 2., 3., 4., 5., 6.],
            labels: vec![0, 1],
            index: vec![0, 2],
        };
        let p = c.put(&d, &key, &f).unwrap();
        let g = c.get(&d).unwrap();
        assert_eq!(
            (g.shape, g.data, g.labels, g.index),
            (
                f.shape.clone(),
                f.data.clone(),
                f.labels.clone(),
                f.index.clone()
            )
        );
        // flip one payload byte: the checksum catches it
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 20] ^= 0x40;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(c.get(&d), Err(Miss::Corrupt(_))));
        // a truncated file too
        std::fs::write(&p, &b[..n / 2]).unwrap();
        assert!(matches!(c.get(&d), Err(Miss::Corrupt(_))));
        // any change of a key part changes the digest
        let mut k2 = key.clone();
        k2.freeze = "fc6".into();
        assert_ne!(k2.digest(), d);
    }

    fn key() -> CacheKey {
        CacheKey {
            weights: "w".into(),
            arch: "alexnet".into(),
            freeze: "fc7".into(),
            data: "sharded".into(),
            preprocessing: "tf1".into(),
            dtype: "f32".into(),
        }
    }

    fn rows(n: usize, per: usize) -> Vec<f32> {
        (0..n * per).map(|i| i as f32 * 0.5 - 3.0).collect()
    }

    #[test]
    fn streamed_entry_reads_rows_in_place() {
        let dir = tempfile::tempdir().unwrap();
        let c = FeatureCache::new(dir.path());
        let (k, per) = (key(), 6);
        let d = k.digest();
        let all = rows(5, per);
        let mut w = c.writer(&d, &k, &[2, 3]).unwrap();
        w.push(&all[..2 * per], &[1, 0], &[0, 1]).unwrap();
        assert!(
            !c.path_for(&d).exists(),
            "nothing is in place before finish"
        );
        w.push(&all[2 * per..], &[4, 3, 2], &[2, 4, 5]).unwrap();
        assert!(
            w.push(&all[..5], &[1], &[0]).is_err(),
            "a partial row is refused"
        );
        w.finish().unwrap();
        let e = Features::Stored(c.open(&d).unwrap());
        assert_eq!(e.shape(), &[5, 2, 3]);
        assert_eq!(e.labels(), &[1, 0, 4, 3, 2]);
        assert_eq!(e.index(), &[0, 1, 2, 4, 5]);
        let mut out = Vec::new();
        e.gather_into(&[4, 1], &mut out).unwrap();
        assert_eq!(&out[..per], &all[4 * per..]);
        assert_eq!(&out[per..], &all[per..2 * per]);
        // where mapping fails (an address-space limit), rows are read from the file: the same
        let Features::Stored(mut entry) = e else {
            unreachable!()
        };
        for seg in &mut entry.segs {
            seg.back = Backing::Read(std::fs::File::open(&seg.path).unwrap());
        }
        let mut read = Vec::new();
        entry.gather_into(&[4, 1], &mut read).unwrap();
        assert_eq!(read, out);
        assert!(
            entry.gather_into(&[5], &mut read).is_err(),
            "row 5 of 5 is refused"
        );
        // the file is plain safetensors: any reader takes it
        let bytes = std::fs::read(c.path_for(&d)).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("features").unwrap().shape(), &[5, 2, 3]);
    }

    #[test]
    fn shards_read_as_one_entry_only_when_complete() {
        let dir = tempfile::tempdir().unwrap();
        let c = FeatureCache::new(dir.path());
        let (k, per) = (key(), 4);
        let d = k.digest();
        let all = rows(7, per);
        // shard 0 covers positions 0..4 (position 2 skipped), shard 1 covers 4..7
        let put = |i: usize, first: usize, samples: usize, pos: &[u64]| {
            let s = ShardInfo {
                index: i,
                count: 2,
                first,
                samples,
            };
            let mut w = c.shard_writer(&d, &k, &[per], s).unwrap();
            let vals: Vec<f32> = pos
                .iter()
                .flat_map(|&p| all[p as usize * per..(p as usize + 1) * per].to_vec())
                .collect();
            let labels: Vec<i64> = pos.iter().map(|&p| p as i64 % 3).collect();
            w.push(&vals, &labels, pos).unwrap();
            w.finish().unwrap();
        };
        put(1, 4, 3, &[4, 5, 6]);
        assert!(
            matches!(c.open(&d), Err(Miss::Absent)),
            "one shard of two is not an entry"
        );
        put(0, 0, 4, &[0, 1, 3]);
        let e = Features::Stored(c.open(&d).unwrap());
        assert_eq!(e.rows(), 6);
        assert_eq!(e.index(), &[0, 1, 3, 4, 5, 6]);
        assert_eq!(e.labels(), &[0, 1, 0, 1, 2, 0]);
        let h = e.to_host().unwrap();
        for (r, &p) in h.index.iter().enumerate() {
            let p = p as usize;
            assert_eq!(
                &h.data[r * per..(r + 1) * per],
                &all[p * per..(p + 1) * per]
            );
        }
        // a damaged shard spoils the set
        let p = c.shard_path(&d, 1, 2);
        let mut b = std::fs::read(&p).unwrap();
        let n = b.len();
        b[n - 40] ^= 1;
        std::fs::write(&p, &b).unwrap();
        assert!(matches!(c.open(&d), Err(Miss::Corrupt(_))));
    }

    #[test]
    fn a_header_with_impossible_sizes_is_damage_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let c = FeatureCache::new(dir.path());
        let d = key().digest();
        let huge = 1u64 << 60;
        let header = serde_json::json!({
            "__metadata__": {"key": d},
            "features": {"dtype": "F32", "shape": [huge, 0], "data_offsets": [0, 0]},
            "labels": {"dtype": "I64", "shape": [huge], "data_offsets": [0, huge * 8]},
            "index": {"dtype": "U64", "shape": [huge], "data_offsets": [huge * 8, 0]},
        })
        .to_string();
        let mut b = (DATA_START - 8).to_le_bytes().to_vec();
        b.extend_from_slice(header.as_bytes());
        b.resize(DATA_START as usize, b' ');
        std::fs::write(c.path_for(&d), &b).unwrap();
        assert!(matches!(c.open(&d), Err(Miss::Corrupt(_))));
    }
}
