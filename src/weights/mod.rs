//! Weight files: readers for `.npy` pickled dicts (bvlc-alexnet.npy, tensorflow-vgg's
//! vgg16.npy), plain pickles, `.npz` and `.safetensors`; shape checks against the architecture;
//! and the one place where layouts are converted to candle's:
//!
//! - conv kernels HWIO `[kh, kw, in, out]` -> OIHW `[out, in, kh, kw]`
//! - fc `[in, out]` -> `[out, in]`
//! - the first fc after a feature map (AlexNet's fc6, VGG's fc6): rows follow TensorFlow's NHWC
//!   flatten `(h * W + w) * C + c`; they are reordered to candle's NCHW flatten `c * H * W + h * W + w`.
//!
//! `.npy`/`.npz`/pickle files are read in the seed's TensorFlow layout; `.safetensors` in candle
//! (= PyTorch) layout, which is also what `runner weights convert` writes.

pub mod array;
pub mod formula;
pub mod npy;
pub mod onnx;
pub mod pickle;
pub mod pickle_write;
pub mod pth;

use std::collections::BTreeMap;
use std::path::Path;

use candle_core::{Device, Tensor};

use crate::arch::{Arch, ParamKind, ParamSpec};
use crate::error::{Error, Result};
use array::NdArray;
use pickle::{Limits, Value};

/// A host tensor in candle layout.
#[derive(Debug, Clone)]
pub struct HostTensor {
    pub shape: Vec<usize>,
    pub data: Vec<f32>,
}

/// All parameters of one backbone, in candle layout, named `<layer>.weight` / `<layer>.bias`.
#[derive(Debug, Clone, Default)]
pub struct WeightSet {
    pub tensors: BTreeMap<String, HostTensor>,
}

impl WeightSet {
    /// Move one tensor to a device.
    pub fn tensor(&self, name: &str, device: &Device) -> Result<Tensor> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| Error::Other(format!("weight {name} missing from the loaded set")))?;
        Ok(Tensor::from_slice(&t.data, t.shape.as_slice(), device)?)
    }

    /// The tensors whose names start with `prefix.`, as candle-nn's `VarBuilder::pp`:
    /// `set.pp("layer1.0").get("conv1.weight", device)` reads `layer1.0.conv1.weight`.
    pub fn pp(&self, prefix: &str) -> Prefixed<'_> {
        Prefixed {
            set: self,
            prefix: prefix.to_string(),
        }
    }

    /// Write as `.safetensors` (candle layout, f32), atomically.
    pub fn save_safetensors(&self, path: &Path) -> Result<()> {
        let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(k, t)| {
                let bytes: &[u8] = bytemuck::cast_slice(&t.data);
                safetensors::tensor::TensorView::new(
                    safetensors::Dtype::F32,
                    t.shape.clone(),
                    bytes,
                )
                .map(|v| (k.clone(), v))
                .map_err(|e| Error::Other(format!("cannot serialize {k}: {e}")))
            })
            .collect::<Result<_>>()?;
        let mut meta = std::collections::HashMap::new();
        meta.insert("layout".to_string(), "candle".to_string());
        meta.insert(
            "written_by".to_string(),
            format!("runner {}", env!("CARGO_PKG_VERSION")),
        );
        let bytes = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Other(format!("cannot serialize weights: {e}")))?;
        crate::fsio::write_atomic(path, &bytes)
    }
}

/// A view of a `WeightSet` under a name prefix (`WeightSet::pp`).
pub struct Prefixed<'a> {
    set: &'a WeightSet,
    prefix: String,
}

impl Prefixed<'_> {
    /// The full name of `name` under this prefix.
    pub fn name(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{name}", self.prefix)
        }
    }

    /// The tensor `prefix.name` on `device`.
    pub fn get(&self, name: &str, device: &Device) -> Result<Tensor> {
        self.set.tensor(&self.name(name), device)
    }
}

/// Which reader a file needs, decided by its first bytes (not its name).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    Npy,
    Npz,
    Pickle,
    Safetensors,
    /// PyTorch's zip checkpoint (`torch.save`): a zip holding `*/data.pkl`.
    Pth,
    Onnx,
}

pub fn sniff(bytes: &[u8]) -> Option<FileKind> {
    if bytes.starts_with(npy::MAGIC) {
        return Some(FileKind::Npy);
    }
    if bytes.starts_with(b"PK\x03\x04") || bytes.starts_with(b"PK\x05\x06") {
        // the central directory at the end names the members: torch.save's hold data.pkl
        let tail = &bytes[bytes.len().saturating_sub(1 << 16)..];
        if tail.windows(8).any(|w| w == b"data.pkl") {
            return Some(FileKind::Pth);
        }
        return Some(FileKind::Npz);
    }
    if pth::is_legacy(bytes) {
        return Some(FileKind::Pth);
    }
    if bytes.len() >= 2 && bytes[0] == 0x80 && (2..=5).contains(&bytes[1]) {
        return Some(FileKind::Pickle);
    }
    if bytes.len() >= 9 {
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap_or([0; 8]));
        if n > 0 && n < bytes.len() as u64 && bytes[8] == b'{' {
            return Some(FileKind::Safetensors);
        }
    }
    // a protobuf starting with field 1 as a varint: ONNX's ir_version
    if bytes.len() > 16 && bytes[0] == 0x08 {
        return Some(FileKind::Onnx);
    }
    None
}

/// One stored tensor as found in a file.
#[derive(Debug, Clone)]
pub struct StoredTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
}

/// Parameters as stored in TF-layout files: layer -> (role, array).
type RawLayers = Vec<(String, Vec<(String, NdArray)>)>;

/// Read the raw per-layer arrays of an `.npy`/pickle/`.npz` file.
fn read_tf_layout(path: &Path, bytes: &[u8], kind: FileKind) -> Result<RawLayers> {
    let limits = Limits::default();
    let bad = |m: String| Error::format(path, m);
    let dict = match kind {
        FileKind::Npy => match npy::parse_npy(bytes, &limits).map_err(bad)? {
            npy::NpyContent::Object(v) => v.unwrap_object_scalar().unwrap_or(v),
            npy::NpyContent::Array(a) => {
                return Err(Error::format(
                    path,
                    format!(
                        "holds one numeric array of shape {:?}, not a dict of layers (expected np.save of {{layer: [W, b]}})",
                        a.shape
                    ),
                ))
            }
        },
        FileKind::Pickle => pickle::unpickle(bytes, &limits).map_err(bad)?.0,
        FileKind::Npz => {
            let members = npy::read_npz_from(std::io::Cursor::new(bytes), &limits).map_err(bad)?;
            return group_npz(path, members);
        }
        FileKind::Safetensors | FileKind::Onnx | FileKind::Pth => unreachable_kind(path)?,
    };
    let entries = dict.as_str_dict().ok_or_else(|| {
        Error::format(
            path,
            format!(
                "holds a {}, expected a dict of layer name -> [W, b]",
                dict.type_name()
            ),
        )
    })?;
    let mut out = Vec::new();
    for (layer, v) in entries {
        let params: Vec<(String, Value)> = if let Some(seq) = v.as_seq() {
            seq.into_iter()
                .enumerate()
                .map(|(i, x)| {
                    (
                        if i == 0 {
                            "W"
                        } else if i == 1 {
                            "b"
                        } else {
                            "extra"
                        }
                        .to_string(),
                        x,
                    )
                })
                .collect()
        } else if let Some(d) = v.as_str_dict() {
            d
        } else if v.as_array().is_some() {
            vec![("W".to_string(), v)]
        } else {
            return Err(Error::format(
                path,
                format!("layer {layer:?} holds a {}, expected [W, b]", v.type_name()),
            ));
        };
        let mut arrays = Vec::new();
        for (role, x) in params {
            let a = x.as_array().ok_or_else(|| {
                Error::format(
                    path,
                    format!(
                        "layer {layer:?} entry {role:?} is a {}, expected an array",
                        x.type_name()
                    ),
                )
            })?;
            arrays.push((role, a));
        }
        out.push((layer, arrays));
    }
    Ok(out)
}

fn unreachable_kind<T>(path: &Path) -> Result<T> {
    Err(Error::format(
        path,
        "internal: safetensors passed to the TF-layout reader",
    ))
}

/// `.npz` members named `<layer>/<role>`, `<layer>_<role>` or `<layer>.<role>`.
fn group_npz(path: &Path, members: Vec<(String, NdArray)>) -> Result<RawLayers> {
    let mut out: RawLayers = Vec::new();
    for (name, a) in members {
        let clean = name.trim_end_matches(":0");
        let split = clean
            .rfind(['/', '.', ':'])
            .or_else(|| clean.rfind('_'))
            .ok_or_else(|| {
                Error::format(
                    path,
                    format!("member {name:?} is not named <layer>/<W|b|weights|biases>"),
                )
            })?;
        let (layer, role) = (&clean[..split], &clean[split + 1..]);
        match out.iter_mut().find(|(l, _)| l == layer) {
            Some((_, v)) => v.push((role.to_string(), a)),
            None => out.push((layer.to_string(), vec![(role.to_string(), a)])),
        }
    }
    Ok(out)
}

fn role_is_weight(role: &str) -> Option<bool> {
    match role.to_ascii_lowercase().as_str() {
        "w" | "weight" | "weights" | "kernel" | "0" => Some(true),
        "b" | "bias" | "biases" | "1" => Some(false),
        _ => None,
    }
}

/// The arrays of an `.npy`/pickle/`.npz` weights file as stored (TF layout), named
/// `<layer>.<role>` (role `W`/`b` for `[W, b]` lists, else the stored key).
pub fn read_stored(path: &Path) -> Result<Vec<(String, NdArray)>> {
    let bytes = npy::read_file(path)?;
    let kind = sniff(&bytes).ok_or_else(|| unknown_kind(path))?;
    if matches!(kind, FileKind::Safetensors | FileKind::Onnx | FileKind::Pth) {
        return Err(Error::format(
            path,
            "is not a TF-layout file (.npy/.npz/pickle); use inspect",
        ));
    }
    Ok(read_tf_layout(path, &bytes, kind)?
        .into_iter()
        .flat_map(|(layer, arrays)| {
            arrays
                .into_iter()
                .map(move |(role, a)| (format!("{layer}.{role}"), a))
        })
        .collect())
}

/// List what a weights file stores, as stored (no conversion).
pub fn inspect(path: &Path) -> Result<Vec<StoredTensor>> {
    let bytes = npy::read_file(path)?;
    let kind = sniff(&bytes).ok_or_else(|| unknown_kind(path))?;
    if kind == FileKind::Safetensors {
        let st = safetensors::SafeTensors::deserialize(&bytes)
            .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
        let mut out: Vec<StoredTensor> = st
            .tensors()
            .into_iter()
            .map(|(n, v)| StoredTensor {
                name: n,
                shape: v.shape().to_vec(),
                dtype: format!("{:?}", v.dtype()),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(out);
    }
    if kind == FileKind::Onnx {
        return onnx::inspect(path, &bytes);
    }
    if kind == FileKind::Pth {
        let mut out = pth::open(path, &bytes)?.infos();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        return Ok(out);
    }
    Ok(read_tf_layout(path, &bytes, kind)?
        .into_iter()
        .flat_map(|(layer, arrays)| {
            arrays.into_iter().map(move |(role, a)| StoredTensor {
                name: format!("{layer}.{role}"),
                shape: a.shape.clone(),
                dtype: a.dtype.descr(),
            })
        })
        .collect())
}

fn unknown_kind(path: &Path) -> Error {
    Error::format(
        path,
        "is not a weights file runner reads (expected a numpy .npy holding a pickled dict, a pickle, an .npz, a .safetensors, a PyTorch .pth or an ONNX .onnx file)",
    )
}

/// Load and check the weights of `arch` from `path`, converted to candle layout.
pub fn load(path: &Path, arch: Arch) -> Result<WeightSet> {
    load_until(path, arch, arch.layers().len() - 1)
}

/// The parameterised layers of `arch` up to layer index `last`.
pub fn needed_params(arch: Arch, last: usize) -> Vec<ParamSpec> {
    arch.params().into_iter().filter(|p| p.at <= last).collect()
}

/// The highest layer a file serves as `backbone.output`: the last layer before the first
/// parameterised layer that `has` says is missing.
pub fn serves_up_to(arch: Arch, has: impl Fn(&str) -> bool) -> &'static str {
    let layers = arch.layers();
    let first_missing = arch.params().iter().find(|p| !has(&p.layer)).map(|p| p.at);
    match first_missing {
        Some(i) if i > 0 => layers[i - 1],
        Some(_) => layers[0],
        None => layers[layers.len() - 1],
    }
}

/// A missing layer: what the file has, and up to which layer it would serve.
fn missing_layer(path: &Path, arch: Arch, layer: &str, found: &[&str]) -> Error {
    let serves = serves_up_to(arch, |l| found.contains(&l));
    Error::weights(
        path,
        format!(
            "layer {layer} is missing (the file has {}); is this a {} weights file? It would serve backbone.output up to {serves}",
            found.join(", "),
            arch.name()
        ),
    )
}

/// Log the layers of a file that the run does not need (above `backbone.output`).
fn log_unused(path: &Path, need: &[ParamSpec], found: &[&str]) {
    let unused = found
        .iter()
        .filter(|f| !need.iter().any(|p| p.layer == **f))
        .count();
    if unused > 0 {
        tracing::info!(
            "{}: {unused} layer(s) of the file are above backbone.output and not loaded",
            path.display()
        );
    }
}

/// As `load`, for the layers up to index `last` only (`backbone.output`): a file without the
/// layers above it (a "notop" convolutional base) serves.
pub fn load_until(path: &Path, arch: Arch, last: usize) -> Result<WeightSet> {
    let bytes = npy::read_file(path).map_err(|e| match e {
        Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            Error::io_hint(path, source, format!("expected {}", arch.weights_hint()))
        }
        other => other,
    })?;
    let kind = sniff(&bytes).ok_or_else(|| unknown_kind(path))?;
    let need = needed_params(arch, last);
    match kind {
        FileKind::Safetensors => return load_safetensors(path, &bytes, arch, &need),
        FileKind::Onnx => return onnx::load(path, &bytes, arch, &need),
        FileKind::Pth => return load_pth(path, &bytes, arch, &need),
        _ => {}
    }
    let raw = read_tf_layout(path, &bytes, kind)?;
    drop(bytes);
    from_tf_layout(path, raw, arch, &need)
}

/// Convert per-layer TF-layout arrays into a checked candle-layout set.
fn from_tf_layout(
    path: &Path,
    raw: RawLayers,
    arch: Arch,
    need: &[ParamSpec],
) -> Result<WeightSet> {
    let mut set = WeightSet::default();
    let found: Vec<&str> = raw.iter().map(|(l, _)| l.as_str()).collect();
    log_unused(path, need, &found);
    for spec in need.iter().cloned() {
        if !spec.is_weight_bias() {
            return Err(Error::weights(
                path,
                format!(
                    "TensorFlow-layout files (.npy/.npz/pickle) hold weight + bias pairs per layer; {} needs {} ({:?}): give a .safetensors or .pth state dict",
                    arch.name(),
                    spec.layer,
                    spec.kind
                ),
            ));
        }
        let Some((_, arrays)) = raw.iter().find(|(l, _)| *l == spec.layer) else {
            return Err(missing_layer(path, arch, &spec.layer, &found));
        };
        let pick = |want_w: bool| {
            arrays
                .iter()
                .find(|(r, _)| role_is_weight(r) == Some(want_w))
                .map(|(_, a)| a)
                .ok_or_else(|| {
                    Error::weights(
                        path,
                        format!(
                            "layer {} has no {}",
                            spec.layer,
                            if want_w { "weight (W)" } else { "bias (b)" }
                        ),
                    )
                })
        };
        let w = pick(true)?;
        let b = pick(false)?;
        let name = |r: &str| format!("{}.{r}", spec.layer);
        check_shape(
            path,
            &name("W"),
            &spec.seed_weight_shape(),
            &w.shape,
            "the seed's TF layout",
        )?;
        check_shape(path, &name("b"), &[spec.bias_len()], &b.shape, "")?;
        let wdata = w
            .to_f32_c()
            .map_err(|m| Error::weights(path, format!("{}: {m}", name("W"))))?;
        let bdata = b
            .to_f32_c()
            .map_err(|m| Error::weights(path, format!("{}: {m}", name("b"))))?;
        set.tensors.insert(
            format!("{}.weight", spec.layer),
            HostTensor {
                shape: spec.weight_shape(),
                data: tf_to_candle(&spec, &wdata),
            },
        );
        set.tensors.insert(
            format!("{}.bias", spec.layer),
            HostTensor {
                shape: vec![spec.bias_len()],
                data: bdata,
            },
        );
    }
    Ok(set)
}

fn check_shape(
    path: &Path,
    name: &str,
    want: &[usize],
    found: &[usize],
    layout: &str,
) -> Result<()> {
    if want != found {
        let layout = if layout.is_empty() {
            String::new()
        } else {
            format!(" ({layout})")
        };
        return Err(Error::weights(
            path,
            format!("tensor {name} has shape {found:?}, expected {want:?}{layout}"),
        ));
    }
    Ok(())
}

/// HWIO -> OIHW for convs; `[in, out]` -> `[out, in]` for fc, with NHWC-flatten rows moved to
/// NCHW-flatten columns where the fc follows a feature map.
pub fn tf_to_candle(spec: &ParamSpec, w: &[f32]) -> Vec<f32> {
    // TF stores both as rows of `cout` values (one row per HWI position / fc input); candle's
    // layout has one row per output. Output `o`, column `col` reads TF row `row_of(col)`.
    let (cout, len, row_of): (usize, usize, Box<dyn Fn(usize) -> usize + Sync>) = match spec.kind {
        ParamKind::Conv {
            kh,
            kw,
            cin,
            cout,
            groups,
            ..
        } => {
            let ci = cin / groups;
            // col = (i*kh + h)*kw + x  <-  row = (h*kw + x)*ci + i
            let f = move |col: usize| {
                let (i, hx) = (col / (kh * kw), col % (kh * kw));
                hx * ci + i
            };
            (cout, ci * kh * kw, Box::new(f))
        }
        ParamKind::Fc {
            cin,
            cout,
            flatten_chw,
        } => match flatten_chw {
            // TF row r = hw*c + ch (NHWC flatten) sits at column ch*hh*ww + hw (NCHW flatten)
            Some((c, hh, ww)) => {
                let f = move |col: usize| (col % (hh * ww)) * c + col / (hh * ww);
                (cout, cin, Box::new(f))
            }
            None => (cout, cin, Box::new(|col: usize| col)),
        },
        // one layout only: nothing to convert
        ParamKind::BatchNorm { .. } | ParamKind::LayerNorm { .. } | ParamKind::Tensor { .. } => {
            return w.to_vec()
        }
    };
    transpose_rows(w, cout, len, &*row_of)
}

/// `out[o*len + col] = w[row_of(col)*cout + o]`, by blocks of 16 outputs: each TF row's
/// 16 values (one cache line) are read once per block and the block's 16 output rows are
/// written in order, so neither side strides through memory (a 25088 x 4096 fc6 went from a
/// cache miss per value to streaming). Blocks run in parallel.
fn transpose_rows(
    w: &[f32],
    cout: usize,
    len: usize,
    row_of: &(dyn Fn(usize) -> usize + Sync),
) -> Vec<f32> {
    use rayon::prelude::*;
    const B: usize = 16;
    let mut out = vec![0f32; w.len()];
    if len == 0 {
        return out;
    }
    out.par_chunks_mut(B * len)
        .enumerate()
        .for_each(|(blk, rows)| {
            let o0 = blk * B;
            let nb = rows.len() / len;
            for col in 0..len {
                let src = &w[row_of(col) * cout + o0..][..nb];
                for (j, v) in src.iter().enumerate() {
                    rows[j * len + col] = *v;
                }
            }
        });
    out
}

/// A tensor as a named-tensor file holds it: shape and f32 values (converted from its dtype).
type Named = (Vec<usize>, Vec<f32>);

/// The layers `need` from a file of named tensors in runner's (candle/PyTorch) layout:
/// `<layer>.weight`/`<layer>.bias`, or torchvision's names for VGG. `get` reads one tensor by
/// name (`None` when absent); `names` lists what the file has, for errors.
fn load_named(
    path: &Path,
    arch: Arch,
    need: &[ParamSpec],
    names: &[String],
    get: impl Fn(&str) -> std::result::Result<Option<Named>, String>,
) -> Result<WeightSet> {
    let has = |n: &str| names.iter().any(|x| x == n);
    // the name a runner tensor has in the file: runner's own, else another family's
    let stored = |n: &str| -> Option<String> {
        if has(n) {
            return Some(n.to_string());
        }
        arch.alt_names(n)
            .into_iter()
            .map(|(_, a)| a)
            .find(|a| has(a))
    };
    let all = arch.params();
    let has_layer = |layer: &str| {
        all.iter()
            .find(|p| p.layer == layer)
            .and_then(|p| p.tensors().into_iter().next())
            .is_some_and(|(n, _)| stored(&n).is_some())
    };
    let present: Vec<&str> = all
        .iter()
        .map(|p| p.layer.as_str())
        .filter(|l| has_layer(l))
        .collect();
    log_unused(path, need, &present);
    let mut set = WeightSet::default();
    for spec in need {
        for (name, want) in spec.tensors() {
            let Some(stored) = stored(&name) else {
                return Err(missing_named(path, arch, &name, names, &has_layer));
            };
            let found = get(&stored).map_err(|m| Error::weights(path, format!("{stored}: {m}")))?;
            let Some((shape, data)) = found else {
                return Err(missing_named(path, arch, &name, names, &has_layer));
            };
            // the same values under shapes that differ only in axes of length 1 (timm's
            // ConvNeXt `gamma` [d] is torchvision's `layer_scale` [d, 1, 1])
            let squeeze = |s: &[usize]| s.iter().copied().filter(|&d| d != 1).collect::<Vec<_>>();
            if shape != want && squeeze(&shape) != squeeze(&want) {
                let tf = spec.seed_weight_shape();
                let hint = if name.ends_with(".weight") && shape == tf && tf != want {
                    " — that is TensorFlow's layout; .safetensors and .pth are read in candle/PyTorch layout (OIHW, [out, in])"
                } else {
                    ""
                };
                return Err(Error::weights(
                    path,
                    format!("tensor {name} has shape {shape:?}, expected {want:?}{hint}"),
                ));
            }
            set.tensors.insert(name, HostTensor { shape: want, data });
        }
    }
    Ok(set)
}

/// A tensor the file lacks: some of what it has, and up to which layer it would serve.
fn missing_named(
    path: &Path,
    arch: Arch,
    name: &str,
    names: &[String],
    has_layer: &dyn Fn(&str) -> bool,
) -> Error {
    let mut listed: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    listed.sort();
    listed.truncate(12);
    let families: Vec<&str> = arch.desc().name_maps.iter().map(|m| m.source).collect();
    let also = if families.is_empty() {
        String::new()
    } else {
        format!(" (or {}'s)", families.join("'s, "))
    };
    Error::weights(
        path,
        format!(
            "tensor {name} is missing (found {}{}); files of named tensors use runner's names <layer>.weight / <layer>.bias{also}; the file would serve backbone.output up to {}",
            listed.join(", "),
            if names.len() > 12 { ", ..." } else { "" },
            serves_up_to(arch, has_layer)
        ),
    )
}

fn load_safetensors(
    path: &Path,
    bytes: &[u8],
    arch: Arch,
    need: &[ParamSpec],
) -> Result<WeightSet> {
    let st = safetensors::SafeTensors::deserialize(bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let names: Vec<String> = st.names().into_iter().map(String::from).collect();
    load_named(path, arch, need, &names, |n| match st.tensor(n) {
        Ok(v) => Ok(Some((v.shape().to_vec(), safetensor_f32(&v)?))),
        Err(_) => Ok(None),
    })
}

/// A PyTorch checkpoint (`torch.save`'s zip or legacy format: a state dict, or a dict holding
/// one under `state_dict`), read by runner's own unpickler, which runs no code (`pth`).
/// Tensors are read lazily, so only the layers up to `backbone.output` are decoded.
fn load_pth(path: &Path, bytes: &[u8], arch: Arch, need: &[ParamSpec]) -> Result<WeightSet> {
    let ckpt = pth::open(path, bytes)?;
    let names = ckpt.names();
    load_named(path, arch, need, &names, |n| ckpt.f32(n))
}

fn safetensor_f32(
    view: &safetensors::tensor::TensorView<'_>,
) -> std::result::Result<Vec<f32>, String> {
    use safetensors::Dtype;
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => d
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => d
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes(c.try_into().unwrap_or([0; 8])) as f32)
            .collect(),
        Dtype::BF16 => d
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::F16 => {
            let a = NdArray::new(
                array::ArrayDtype::from_code("<f2")?,
                vec![d.len() / 2],
                false,
                d.to_vec(),
                u64::MAX,
            )?;
            a.to_f32_c()?
        }
        other => {
            return Err(format!(
                "unsupported dtype {other:?} (expected a float type)"
            ))
        }
    })
}

/// The seeded stand-in for pretrained weights (`weights = "random"`): the deterministic formula
/// of `formula` (He-scaled uniform), in the seed's layout, converted like a real file — with the
/// first layer's weights divided by 128 so that activations stay of order 1 for raw 0..255
/// pixels, as they do with the real pretrained weights.
pub fn random(arch: Arch, seed: u64) -> WeightSet {
    let mut raw = formula::tf_layout(arch, seed);
    // (only for networks fed raw 0..255 pixels: the others see inputs of order 1 already)
    if let (Some((w, _)), 1.0) = (raw.first_mut(), arch.preprocess().scale) {
        w.iter_mut().for_each(|v| *v /= 128.0);
    }
    let mut set = WeightSet::default();
    for (spec, (w, b)) in arch.params().iter().zip(raw) {
        let mut tensors = spec.tensors().into_iter();
        let values = |role: &str, n: usize| -> Vec<f32> {
            // batch and layer norms start as the identity: scale 1, shift 0, statistics 0 and 1
            let one = matches!(role, "weight" | "running_var");
            vec![if one { 1.0 } else { 0.0 }; n]
        };
        if spec.is_weight_bias() || matches!(spec.kind, ParamKind::Conv { .. }) {
            if let Some((name, shape)) = tensors.next() {
                let data = tf_to_candle(spec, &w);
                set.tensors.insert(name, HostTensor { shape, data });
            }
            if let Some((name, shape)) = tensors.next() {
                set.tensors.insert(name, HostTensor { shape, data: b });
            }
            continue;
        }
        for (name, shape) in tensors {
            let n = shape.iter().product();
            let data = match spec.kind {
                // embeddings and tokens: the formula's values, as a learned tensor's start
                ParamKind::Tensor { .. } => w.clone(),
                _ => values(name.rsplit('.').next().unwrap_or(""), n),
            };
            set.tensors.insert(name, HostTensor { shape, data });
        }
    }
    set
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fc6_rows_move_from_nhwc_to_nchw_flatten() {
        let spec = ParamSpec {
            layer: "fc".into(),
            at: 9,
            kind: ParamKind::Fc {
                cin: 12,
                cout: 37, // two whole blocks of 16 outputs and a partial one
                flatten_chw: Some((3, 2, 2)),
            },
        };
        // TF row r = (h*2 + w)*3 + c, output o holds value 100 r + o
        let w: Vec<f32> = (0..12 * 37)
            .map(|i| (i / 37 * 100 + i % 37) as f32)
            .collect();
        let out = tf_to_candle(&spec, &w);
        // candle row o, column c*4 + h*2 + w must hold TF row (h*2+w)*3 + c, output o
        for o in 0..37 {
            for c in 0..3 {
                for hw in 0..4 {
                    assert_eq!(out[o * 12 + c * 4 + hw], ((hw * 3 + c) * 100 + o) as f32);
                }
            }
        }
    }

    #[test]
    fn conv_hwio_to_oihw() {
        let spec = ParamSpec {
            layer: "c".into(),
            at: 1,
            kind: ParamKind::Conv {
                kh: 2,
                kw: 3,
                cin: 4,
                cout: 37,
                groups: 2,
                bias: true,
            },
        };
        let n = 2 * 3 * 2 * 37;
        let w: Vec<f32> = (0..n).map(|i| i as f32).collect();
        let out = tf_to_candle(&spec, &w);
        for o in 0..37 {
            for i in 0..2 {
                for h in 0..2 {
                    for x in 0..3 {
                        assert_eq!(
                            out[((o * 2 + i) * 2 + h) * 3 + x],
                            (((h * 3 + x) * 2 + i) * 37 + o) as f32
                        );
                    }
                }
            }
        }
    }
}
