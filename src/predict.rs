//! `runner predict RUN_DIR INPUT...`: classify images with a finished run's head.
//!
//! The run's `config.toml` names the backbone and its weights; `head.safetensors` holds the head
//! (and any backbone layers trained above the freeze point). Inputs are image files, folders of
//! images (searched recursively) or train.p-style pickles (whose labels are then reported too).
//! Images are prepared as the run's dataset kind prepares them: `folder` runs centre-crop and
//! resize to `dataset.image_size`; other kinds resize the whole image to `dataset.image_size`
//! (32 for pickle/synthetic runs, as train.p stores them), then to the backbone's input size.

use std::path::{Path, PathBuf};

use candle_core::{Device, Tensor};

use crate::backbone::Network;
use crate::data::images;
use crate::data::preprocess::{self, center_crop, resize_u8};
use crate::error::{Error, Result};
use crate::spec::{DatasetKind, Spec};
use crate::train::head::Head;
use crate::weights::{self, HostTensor, WeightSet};

/// One classified input.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Prediction {
    pub input: String,
    pub label: Option<i64>,
    /// (class index, class name, probability), most probable first
    pub top: Vec<(usize, String, f64)>,
}

struct Loaded {
    spec: Spec,
    net: Network,
    head: Head,
    classes: usize,
    names: Vec<String>,
}

fn read_head(path: &Path, device: &Device) -> Result<Vec<(String, Tensor)>> {
    let bytes = std::fs::read(path)
        .map_err(|e| Error::io_hint(path, e, "a finished run folder holds head.safetensors"))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| Error::format(path, format!("not a valid safetensors file: {e}")))?;
    let mut out = Vec::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::format(path, format!("{name}: expected f32")));
        }
        let data: Vec<f32> = view
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        out.push((name, Tensor::from_vec(data, view.shape(), device)?));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn class_names(spec: &Spec, classes: usize) -> Vec<String> {
    let fallback = || (0..classes).map(|c| c.to_string()).collect::<Vec<_>>();
    match spec.dataset_kind {
        DatasetKind::Synthetic => crate::data::synthetic::class_names(),
        DatasetKind::Folder => {
            let mut dirs: Vec<String> = std::fs::read_dir(&spec.dataset_path)
                .map(|r| {
                    r.filter_map(|e| e.ok())
                        .filter(|e| e.path().is_dir())
                        .map(|e| e.file_name().to_string_lossy().to_string())
                        .collect()
                })
                .unwrap_or_default();
            dirs.sort();
            if dirs.len() == classes {
                dirs
            } else {
                fallback()
            }
        }
        _ => {
            // Udacity ships signnames.csv (ClassId,SignName) next to train.p
            let csv = spec
                .dataset_path
                .parent()
                .unwrap_or(Path::new("."))
                .join("signnames.csv");
            let mut names = fallback();
            if let Ok(mut r) = csv::Reader::from_path(&csv) {
                for rec in r.records().flatten() {
                    if let (Some(Ok(id)), Some(n)) =
                        (rec.get(0).map(|v| v.parse::<usize>()), rec.get(1))
                    {
                        if let Some(slot) = names.get_mut(id) {
                            *slot = n.to_string();
                        }
                    }
                }
            }
            names
        }
    }
}

fn load(run_dir: &Path, device: &Device) -> Result<Loaded> {
    let spec = crate::spec::load(&run_dir.join("config.toml"), &[])?;
    let named = read_head(&run_dir.join("head.safetensors"), device)?;
    let mut set: WeightSet = match &spec.weights {
        crate::spec::WeightsSource::Random => weights::random(spec.arch, spec.seed),
        crate::spec::WeightsSource::File(p) => weights::load_until(p, spec.arch, spec.output)?,
    };
    // backbone layers trained above the freeze point replace the pretrained ones
    for (name, t) in named.iter().filter(|(n, _)| !n.starts_with("head.")) {
        if set.tensors.contains_key(name) {
            let data = t.flatten_all()?.to_vec1::<f32>()?;
            set.tensors.insert(
                name.clone(),
                HostTensor {
                    shape: t.dims().to_vec(),
                    data,
                },
            );
        }
    }
    let net = Network::for_spec(&spec, &set, device)?;
    let mut layers = Vec::new();
    let mut k = 0;
    while let (Some(w), Some(b)) = (
        named.iter().find(|(n, _)| *n == format!("head.{k}.weight")),
        named.iter().find(|(n, _)| *n == format!("head.{k}.bias")),
    ) {
        layers.push((
            candle_core::Var::from_tensor(&w.1)?,
            candle_core::Var::from_tensor(&b.1)?,
        ));
        k += 1;
    }
    let classes = layers
        .last()
        .map(|(_, b)| b.as_tensor().dim(0))
        .transpose()?
        .ok_or_else(|| {
            Error::format(
                run_dir.join("head.safetensors"),
                "holds no head.N.weight/bias tensors",
            )
        })?;
    let head = Head {
        layers,
        activation: spec.head.activation,
        dropout: 0.0,
    };
    let names = class_names(&spec, classes);
    Ok(Loaded {
        spec,
        net,
        head,
        classes,
        names,
    })
}

/// Images (u8 HWC, `size x size` each), one display name and optional label per image.
struct Gathered {
    px: Vec<u8>,
    size: usize,
    names: Vec<String>,
    labels: Vec<Option<i64>>,
}

fn gather(inputs: &[PathBuf], spec: &Spec) -> Result<Gathered> {
    // the size the training images had before the backbone's resize
    let size = match spec.dataset_kind {
        DatasetKind::Pickle | DatasetKind::Synthetic => 32,
        DatasetKind::Idx => 28,
        _ => spec.image_size,
    };
    let mut px = Vec::new();
    let mut names = Vec::new();
    let mut labels = Vec::new();
    let mut files = Vec::new();
    fn walk(p: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(p) {
            let mut v: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
            v.sort();
            for e in v {
                if e.is_dir() {
                    walk(&e, out);
                } else if images::is_image(&e) {
                    out.push(e);
                }
            }
        }
    }
    for p in inputs {
        if p.is_dir() {
            walk(p, &mut files);
        } else if images::is_image(p) {
            files.push(p.clone());
        } else {
            // a train.p-style pickle
            let d = crate::data::pickle::load(p, None)?;
            for i in 0..d.n {
                px.extend(resize_u8(
                    d.batch_pixels(i, 1),
                    d.height,
                    d.width,
                    size,
                    size,
                    spec.resize,
                ));
                names.push(format!("{}[{i}]", p.display()));
                labels.push(Some(d.labels[i]));
            }
        }
    }
    for f in files {
        let img = images::decode(&f).map_err(|m| Error::data(&f, m))?;
        let (src, h, w) = if spec.dataset_kind == DatasetKind::Folder {
            let (sq, s) = center_crop(&img.px, img.h, img.w);
            (sq, s, s)
        } else {
            (img.px, img.h, img.w)
        };
        px.extend(resize_u8(&src, h, w, size, size, spec.resize));
        names.push(f.display().to_string());
        labels.push(None);
    }
    if names.is_empty() {
        return Err(Error::Other("predict: no images among the inputs".into()));
    }
    Ok(Gathered {
        px,
        size,
        names,
        labels,
    })
}

/// Classify every input; `top` classes per input.
pub fn predict(run_dir: &Path, inputs: &[PathBuf], top: usize) -> Result<Vec<Prediction>> {
    crate::threads::in_worker_pool(|| {
        let device = Device::Cpu;
        let m = load(run_dir, &device)?;
        let Gathered {
            px,
            size,
            names,
            labels,
        } = gather(inputs, &m.spec)?;
        let per = size * size * 3;
        let n = names.len();
        let feature_end = m.spec.output;
        let mut out = Vec::with_capacity(n);
        let batch = m.spec.extract_batch_for(&device).max(1);
        let mut start = 0;
        while start < n {
            let b = batch.min(n - start);
            let x = preprocess::to_input(
                &px[start * per..(start + b) * per],
                (b, size, size),
                m.spec.input_size,
                m.spec.resize,
                &device,
                &m.spec.backends,
            )?;
            let f = m.net.forward_until(&x, feature_end)?;
            let f = crate::backbone::layers::global_pool(&f, m.spec.pool)?;
            let logits = m.head.forward(&f.flatten_from(1)?, None)?;
            let probs: Vec<Vec<f32>> = crate::backbone::layers::softmax(&logits)?.to_vec2()?;
            for (i, p) in probs.into_iter().enumerate() {
                let mut idx: Vec<usize> = (0..m.classes).collect();
                idx.sort_by(|a, b| p[*b].total_cmp(&p[*a]));
                out.push(Prediction {
                    input: names[start + i].clone(),
                    label: labels[start + i],
                    top: idx
                        .into_iter()
                        .take(top.max(1))
                        .map(|c| (c, m.names.get(c).cloned().unwrap_or_default(), p[c] as f64))
                        .collect(),
                });
            }
            start += b;
        }
        Ok(out)
    })
}
