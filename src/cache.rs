//! The content-addressed feature cache. The frozen part of a backbone is a pure function of
//! (weights, architecture, freeze layer, input pixels, preprocessing, dtype), so its outputs are
//! stored once under a key hashed from exactly those, and reused by every later run and every
//! point of a sweep. Files are safetensors (`features`, `labels`) with the full key and a
//! SHA-256 of the payload in their metadata; a file whose key or checksum does not match is
//! rebuilt, never trusted. Writes are atomic (temp file + rename).

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
pub const FORMAT_VERSION: u32 = 1;

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
type Kept = Option<(String, Arc<HostFeatures>)>;
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
pub fn remembered(digest: &str) -> Option<Arc<HostFeatures>> {
    if !KEEP.load(Ordering::Relaxed) {
        return None;
    }
    let l = LAST.lock().ok()?;
    l.as_ref()
        .filter(|(d, _)| d == digest)
        .map(|(_, f)| f.clone())
}

/// Keep `f` as the features under `digest` (when keeping is on).
pub fn remember(digest: &str, f: &Arc<HostFeatures>) {
    if KEEP.load(Ordering::Relaxed) {
        if let Ok(mut l) = LAST.lock() {
            *l = Some((digest.to_string(), f.clone()));
        }
    }
}

/// Host features: `shape[0]` rows, row-major f32.
#[derive(Debug, Clone)]
pub struct HostFeatures {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
    pub labels: Vec<i64>,
}

fn payload_checksum(data: &[u8], labels: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(data);
    h.update(labels);
    format!("{:x}", h.finalize())
}

pub struct FeatureCache {
    dir: PathBuf,
}

/// Why a cache file was not used.
#[derive(Debug)]
pub enum Miss {
    Absent,
    Corrupt(String),
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

    pub fn path_for(&self, digest: &str) -> PathBuf {
        self.dir
            .join(format!("{}.safetensors", &digest[..32.min(digest.len())]))
    }

    /// The stored features for `digest`, if present and intact.
    pub fn get(&self, digest: &str) -> std::result::Result<HostFeatures, Miss> {
        let path = self.path_for(digest);
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(Miss::Absent),
            Err(e) => return Err(Miss::Corrupt(e.to_string())),
        };
        let corrupt = |m: &str| Miss::Corrupt(format!("{}: {m}", path.display()));
        let (_, meta) =
            safetensors::SafeTensors::read_metadata(&bytes).map_err(|e| corrupt(&e.to_string()))?;
        let meta: HashMap<String, String> = meta.metadata().clone().unwrap_or_default();
        if meta.get("key").map(String::as_str) != Some(digest) {
            return Err(corrupt("key mismatch"));
        }
        let st =
            safetensors::SafeTensors::deserialize(&bytes).map_err(|e| corrupt(&e.to_string()))?;
        let f = st.tensor("features").map_err(|e| corrupt(&e.to_string()))?;
        let l = st.tensor("labels").map_err(|e| corrupt(&e.to_string()))?;
        if f.dtype() != safetensors::Dtype::F32 || l.dtype() != safetensors::Dtype::I64 {
            return Err(corrupt("unexpected dtypes"));
        }
        // The checksum and the copy out of the file's bytes (little-endian, as every target
        // runner builds for; not aligned for f32 inside the buffer) run side by side.
        let (sum, (data, labels)) = rayon::join(
            || payload_checksum(f.data(), l.data()),
            || {
                let mut data = vec![0f32; f.data().len() / 4];
                bytemuck::cast_slice_mut(&mut data).copy_from_slice(f.data());
                let mut labels = vec![0i64; l.data().len() / 8];
                bytemuck::cast_slice_mut(&mut labels).copy_from_slice(l.data());
                (data, labels)
            },
        );
        if meta.get("checksum") != Some(&sum) {
            return Err(corrupt("checksum mismatch"));
        }
        let shape = f.shape().to_vec();
        if shape.first() != Some(&labels.len()) {
            return Err(corrupt("row count mismatch"));
        }
        Ok(HostFeatures {
            shape,
            data,
            labels,
        })
    }

    /// Store features atomically.
    pub fn put(&self, digest: &str, key: &CacheKey, f: &HostFeatures) -> Result<PathBuf> {
        // what writers killed on this host left behind
        crate::fsio::remove_stale_temps(&self.dir);
        let path = self.path_for(digest);
        let fb: &[u8] = bytemuck::cast_slice(&f.data);
        let lb: &[u8] = bytemuck::cast_slice(&f.labels);
        let mut meta = HashMap::new();
        meta.insert("key".to_string(), digest.to_string());
        meta.insert("checksum".to_string(), payload_checksum(fb, lb));
        meta.insert("arch".to_string(), key.arch.clone());
        meta.insert("freeze".to_string(), key.freeze.clone());
        meta.insert("format".to_string(), FORMAT_VERSION.to_string());
        let views = vec![
            (
                "features".to_string(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, f.shape.clone(), fb)
                    .map_err(|e| Error::Other(format!("cache: {e}")))?,
            ),
            (
                "labels".to_string(),
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::I64,
                    vec![f.labels.len()],
                    lb,
                )
                .map_err(|e| Error::Other(format!("cache: {e}")))?,
            ),
        ];
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Other(format!("cache: {e}")))?;
        crate::fsio::write_atomic(&path, &bytes)?;
        Ok(path)
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
        let f = Arc::new(HostFeatures {
            shape: vec![1, 2],
            data: vec![1.0, 2.0],
            labels: vec![0],
        });
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
        };
        let p = c.put(&d, &key, &f).unwrap();
        let g = c.get(&d).unwrap();
        assert_eq!(
            (g.shape, g.data, g.labels),
            (f.shape.clone(), f.data.clone(), f.labels.clone())
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
}
