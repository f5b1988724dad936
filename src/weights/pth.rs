//! PyTorch checkpoints (`torch.save`), read with runner's own unpickler (`pickle::unpickle_torch`:
//! nothing in the file is executed, no other library reads it or prints anything): the zip
//! format (PyTorch 1.6 and later: `<archive>/data.pkl` and one file per storage under
//! `<archive>/data/`) and the legacy format (a stream of pickles: magic number, protocol version,
//! system info, the object, the sorted storage keys, then each storage's element count as 8
//! little-endian bytes and its bytes).
//!
//! The object is a state dict, or a dict holding one under `state_dict`. Every tensor's extent
//! is checked against its storage's claimed size when the pickle is read, and every storage's
//! claimed size against the bytes the file holds before anything is allocated.

use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::rc::Rc;

use super::pickle::{unpickle_torch, Limits, TorchDtype, TorchTensor, Value};
use super::StoredTensor;
use crate::error::{Error, Result};

/// The legacy format's first pickle: protocol 2, `LONG1` of 10 bytes (0x1950a86a20f9469cfc6c),
/// `STOP`.
const LEGACY_MAGIC: &[u8] = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19.";

/// Whether `bytes` start like a legacy `torch.save` file.
pub fn is_legacy(bytes: &[u8]) -> bool {
    bytes.starts_with(LEGACY_MAGIC)
}

/// Where a storage's bytes are.
enum Storages<'a> {
    /// zip entries `<prefix>data/<key>`
    Zip {
        archive: std::cell::RefCell<zip::ZipArchive<std::io::Cursor<&'a [u8]>>>,
        prefix: String,
    },
    /// key -> the bytes after its element count in the legacy stream
    Legacy(HashMap<String, &'a [u8]>),
}

/// A checkpoint's tensors by name, read lazily from the file's bytes.
pub struct Checkpoint<'a> {
    format: &'static str,
    tensors: Vec<(String, Rc<TorchTensor>)>,
    storages: Storages<'a>,
}

/// Read the pickle of `bytes` (zip or legacy) and index its storages.
pub fn open<'a>(path: &'a Path, bytes: &'a [u8]) -> Result<Checkpoint<'a>> {
    if is_legacy(bytes) {
        open_legacy(path, bytes)
    } else {
        open_zip(path, bytes)
    }
}

fn refused(path: &Path, format: &str, e: impl std::fmt::Display) -> Error {
    Error::format(
        path,
        format!("is a PyTorch checkpoint ({format}) that runner cannot read: {e}"),
    )
}

fn open_zip<'a>(path: &'a Path, bytes: &'a [u8]) -> Result<Checkpoint<'a>> {
    const FORMAT: &str = "torch.save's zip format";
    let bad = |e: &dyn std::fmt::Display| refused(path, FORMAT, e);
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| bad(&e))?;
    let pkl = archive
        .file_names()
        .find(|n| *n == "data.pkl" || n.ends_with("/data.pkl"))
        .map(String::from)
        .ok_or_else(|| bad(&"no data.pkl in the archive"))?;
    let prefix = pkl.trim_end_matches("data.pkl").to_string();
    let data = {
        let mut f = archive.by_name(&pkl).map_err(|e| bad(&e))?;
        let mut v = Vec::new();
        // the entry's declared size is not trusted: read at most the archive's size
        (&mut f)
            .take(bytes.len() as u64)
            .read_to_end(&mut v)
            .map_err(|e| bad(&e))?;
        v
    };
    let (obj, _) =
        unpickle_torch(&data, &Limits::default()).map_err(|e| bad(&format!("{pkl}: {e}")))?;
    Ok(Checkpoint {
        format: FORMAT,
        tensors: state_dict(&obj).map_err(|e| bad(&e))?,
        storages: Storages::Zip {
            archive: std::cell::RefCell::new(archive),
            prefix,
        },
    })
}

fn open_legacy<'a>(path: &'a Path, bytes: &'a [u8]) -> Result<Checkpoint<'a>> {
    const FORMAT: &str = "torch.save's legacy format";
    let bad = |e: &dyn std::fmt::Display| refused(path, FORMAT, e);
    let limits = Limits::default();
    let mut pos = LEGACY_MAGIC.len();
    let mut next = |what: &str| -> Result<Value> {
        let (v, used) = unpickle_torch(&bytes[pos..], &limits)
            .map_err(|e| bad(&format!("its {what} (at byte {pos}): {e}")))?;
        pos += used;
        Ok(v)
    };
    let version = next("protocol version")?;
    if version.as_int() != Some(1001) {
        return Err(bad(&format!("protocol version {version:?}, expected 1001")));
    }
    let _sys_info = next("system information")?;
    let obj = next("object")?;
    let keys = next("storage keys")?;
    let keys: Vec<String> = keys
        .as_seq()
        .and_then(|k| k.iter().map(|k| k.as_text()).collect())
        .ok_or_else(|| bad(&"the storage keys are not a list of strings"))?;
    let tensors = state_dict(&obj).map_err(|e| bad(&e))?;
    let dtype_of: HashMap<&str, TorchDtype> = tensors
        .iter()
        .map(|(_, t)| (t.storage.key.as_str(), t.storage.dtype))
        .collect();
    let mut records = HashMap::new();
    for key in &keys {
        let count = bytes
            .get(pos..pos + 8)
            .map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8])))
            .ok_or_else(|| bad(&format!("the file ends before storage {key:?}")))?;
        pos += 8;
        let size = dtype_of.get(key.as_str()).map_or(1, |d| d.size()) as u64;
        let len = count
            .checked_mul(size)
            .filter(|&n| n <= (bytes.len() - pos) as u64)
            .ok_or_else(|| {
                bad(&format!(
                    "storage {key:?} claims {count} elements of {size} bytes; the file holds {} more bytes",
                    bytes.len() - pos
                ))
            })? as usize;
        records.insert(key.clone(), &bytes[pos..pos + len]);
        pos += len;
    }
    Ok(Checkpoint {
        format: FORMAT,
        tensors,
        storages: Storages::Legacy(records),
    })
}

/// The tensors of a state dict (`{name: tensor}`), or of one under `state_dict`; other entries
/// (`_metadata`, numbers) are not tensors and are left out.
fn state_dict(obj: &Value) -> std::result::Result<Vec<(String, Rc<TorchTensor>)>, String> {
    let tensors = |v: &Value| -> Vec<(String, Rc<TorchTensor>)> {
        v.as_str_dict()
            .unwrap_or_default()
            .into_iter()
            .filter_map(|(k, v)| match v {
                Value::Tensor(t) => Some((k, t)),
                _ => None,
            })
            .collect()
    };
    let top = tensors(obj);
    if !top.is_empty() {
        return Ok(top);
    }
    let nested = obj
        .as_str_dict()
        .unwrap_or_default()
        .into_iter()
        .find(|(k, _)| k == "state_dict")
        .map(|(_, v)| tensors(&v))
        .unwrap_or_default();
    if nested.is_empty() {
        return Err(format!(
            "it holds a {} with no tensors (expected a state dict, or one under \"state_dict\")",
            obj.type_name()
        ));
    }
    Ok(nested)
}

impl Checkpoint<'_> {
    /// Every tensor's name, shape and dtype, in the file's order.
    pub fn infos(&self) -> Vec<StoredTensor> {
        self.tensors
            .iter()
            .map(|(n, t)| StoredTensor {
                name: n.clone(),
                shape: t.shape.clone(),
                dtype: t.storage.dtype.name().to_string(),
            })
            .collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.tensors.iter().map(|(n, _)| n.clone()).collect()
    }

    /// The bytes of storage `key`, checked to hold the elements the pickle claims.
    fn storage(&self, t: &TorchTensor) -> std::result::Result<Vec<u8>, String> {
        let s = &t.storage;
        let want = s.numel.saturating_mul(s.dtype.size() as u64);
        let bad = |e: String| format!("{}: {e}", self.format);
        let bytes = match &self.storages {
            Storages::Legacy(r) => r
                .get(&s.key)
                .map(|b| b.to_vec())
                .ok_or_else(|| bad(format!("storage {:?} is not in the file", s.key)))?,
            Storages::Zip { archive, prefix } => {
                let mut a = archive.borrow_mut();
                let name = format!("{prefix}data/{}", s.key);
                let mut f = a
                    .by_name(&name)
                    .map_err(|e| bad(format!("storage {name}: {e}")))?;
                let mut v = Vec::new();
                // never more than the pickle claims (plus one byte, to tell a longer entry)
                (&mut f)
                    .take(want.saturating_add(1))
                    .read_to_end(&mut v)
                    .map_err(|e| bad(format!("storage {name}: {e}")))?;
                v
            }
        };
        if (bytes.len() as u64) < want {
            return Err(bad(format!(
                "storage {:?} should hold {} {} elements ({want} bytes) but holds {} bytes",
                s.key,
                s.numel,
                s.dtype.name(),
                bytes.len()
            )));
        }
        Ok(bytes)
    }

    /// Tensor `name` as f32 values in row-major order, with its shape (`None` when absent).
    /// Errors are plain messages; the caller names the file.
    #[allow(clippy::type_complexity)]
    pub fn f32(&self, name: &str) -> std::result::Result<Option<(Vec<usize>, Vec<f32>)>, String> {
        let Some((_, t)) = self.tensors.iter().find(|(n, _)| n == name) else {
            return Ok(None);
        };
        let bytes = self.storage(t)?;
        let dtype = t.storage.dtype;
        let at = |i: u64| -> f32 {
            let k = i as usize * dtype.size();
            let b = &bytes[k..k + dtype.size()];
            match dtype {
                TorchDtype::F32 => f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
                TorchDtype::F64 => f64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32,
                TorchDtype::F16 => half::f16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::BF16 => half::bf16::from_le_bytes([b[0], b[1]]).to_f32(),
                TorchDtype::I64 => i64::from_le_bytes(b.try_into().unwrap_or([0; 8])) as f32,
                TorchDtype::I32 => i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32,
                TorchDtype::I16 => i16::from_le_bytes([b[0], b[1]]) as f32,
                TorchDtype::I8 => b[0] as i8 as f32,
                TorchDtype::U8 | TorchDtype::Bool => b[0] as f32,
            }
        };
        // row-major walk over the view (its extent was checked against the storage)
        let n: usize = t.shape.iter().product();
        let mut out = Vec::with_capacity(n);
        let mut idx = vec![0usize; t.shape.len()];
        for _ in 0..n {
            let pos = t.offset
                + idx
                    .iter()
                    .zip(&t.stride)
                    .map(|(&i, &s)| i as u64 * s)
                    .sum::<u64>();
            out.push(at(pos));
            for d in (0..idx.len()).rev() {
                idx[d] += 1;
                if idx[d] < t.shape[d] {
                    break;
                }
                idx[d] = 0;
            }
        }
        Ok(Some((t.shape.clone(), out)))
    }
}
