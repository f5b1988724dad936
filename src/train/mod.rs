//! Training a head (and any trainable backbone tail) on frozen features: the epoch loop,
//! seeded shuffling, evaluation, early stopping and best-epoch tracking.

pub mod head;
pub mod metrics;
pub mod optim;
pub mod schedule;
pub mod step;

use std::sync::Arc;
use std::time::Instant;

use candle_core::{DType, Device, Tensor, Var};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::backbone::layers::global_pool;
use crate::backbone::Network;
use crate::cache::Features;
use crate::error::Result;
use crate::spec::{Metric, Pool, Spec, TrainSection};
use head::Head;
use metrics::Sums;

/// Host-independent copies of every trainable tensor, by name.
pub type Snapshot = Vec<(String, Tensor)>;

/// The feature rows of a split: a tensor on the device, or rows of stored features read a
/// mini-batch at a time (on the CPU, from a memory-mapped cache entry).
pub enum Rows {
    Device(Tensor),
    Host {
        src: Arc<Features>,
        /// The split's rows of `src`, in split order.
        rows: Vec<usize>,
        /// Shape of one row.
        tail: Vec<usize>,
    },
}

/// Features and labels of one split.
pub struct Split {
    pub x: Rows,
    /// u32 labels, on the device
    pub y: Tensor,
    pub n: usize,
}

/// Rows copied to the device at once when a stored entry is loaded onto a GPU.
const UPLOAD_ROWS: usize = 8192;

impl Split {
    pub fn new(x: Tensor, labels: &[i64], device: &Device) -> Result<Split> {
        let y: Vec<u32> = labels.iter().map(|&l| l as u32).collect();
        let n = y.len();
        Ok(Split {
            x: Rows::Device(x),
            y: Tensor::from_vec(y, n, device)?,
            n,
        })
    }

    /// The rows `rows` of features (all rows for `None`). Stored features on the CPU stay where
    /// they are, read a batch at a time; otherwise the rows are copied to `device` (to a GPU in
    /// blocks, so the host never holds them all at once).
    pub fn from_features(
        f: &Arc<Features>,
        rows: Option<&[usize]>,
        device: &Device,
    ) -> Result<Split> {
        let rows: Vec<usize> = match rows {
            Some(r) => r.to_vec(),
            None => (0..f.rows()).collect(),
        };
        let labels: Vec<i64> = rows.iter().map(|&i| f.labels()[i]).collect();
        let tail = f.shape()[1..].to_vec();
        let stored = matches!(**f, Features::Stored(_));
        if stored && device.is_cpu() {
            let mut s = Split::new(Tensor::zeros(0, DType::F32, device)?, &labels, device)?;
            s.x = Rows::Host {
                src: f.clone(),
                rows,
                tail,
            };
            return Ok(s);
        }
        // on the CPU the tensor is the copy: one block, no concatenation
        let block = if device.is_cpu() {
            rows.len().max(1)
        } else {
            UPLOAD_ROWS
        };
        let mut parts = Vec::new();
        for block in rows.chunks(block) {
            parts.push(gather(f, block, &tail, device)?);
        }
        let x = match parts.len() {
            0 => Tensor::zeros(
                [0].iter().chain(&tail).copied().collect::<Vec<_>>(),
                DType::F32,
                device,
            )?,
            1 => parts.remove(0),
            _ => Tensor::cat(&parts, 0)?,
        };
        Split::new(x, &labels, device)
    }

    pub fn device(&self) -> &Device {
        self.y.device()
    }

    /// Features and labels of the samples at positions `idx` of the split.
    pub fn take(&self, idx: &[u32]) -> Result<(Tensor, Tensor)> {
        let device = self.device();
        let it = Tensor::from_slice(idx, idx.len(), device)?;
        let y = self.y.index_select(&it, 0)?;
        let x = match &self.x {
            Rows::Device(x) => x.index_select(&it, 0)?,
            Rows::Host { src, rows, tail } => {
                let r: Vec<usize> = idx.iter().map(|&i| rows[i as usize]).collect();
                gather(src, &r, tail, device)?
            }
        };
        Ok((x, y))
    }

    /// Features of samples `start..start + count`.
    pub fn x_range(&self, start: usize, count: usize) -> Result<Tensor> {
        match &self.x {
            Rows::Device(x) => Ok(x.narrow(0, start, count)?),
            Rows::Host { src, rows, tail } => {
                gather(src, &rows[start..start + count], tail, self.device())
            }
        }
    }
}

/// Rows `rows` of `f` as one tensor `(rows.len(), tail...)` on `device`.
fn gather(f: &Features, rows: &[usize], tail: &[usize], device: &Device) -> Result<Tensor> {
    let mut data = Vec::new();
    f.gather_into(rows, &mut data)?;
    let mut shape = vec![rows.len()];
    shape.extend_from_slice(tail);
    Ok(Tensor::from_vec(data, shape, device)?)
}

/// The root mean square of the L2 norms of a split's rows, as the head reads them (flattened):
/// how large the head's input is, for `head.init_std = "auto"`. Read in blocks, summed in f64.
pub fn rms_row_norm(s: &Split) -> Result<f64> {
    const BLOCK: usize = 2048;
    let mut sum = 0f64;
    let mut start = 0;
    while start < s.n {
        let count = BLOCK.min(s.n - start);
        let x = s
            .x_range(start, count)?
            .to_dtype(DType::F32)?
            .flatten_all()?;
        sum += x
            .to_vec1::<f32>()?
            .iter()
            .map(|&v| (v as f64) * (v as f64))
            .sum::<f64>();
        start += count;
    }
    Ok((sum / s.n.max(1) as f64).sqrt())
}

/// Whether layers above the freeze point train with the head (they need the network).
pub fn has_tail(spec: &Spec) -> bool {
    spec.freeze < spec.tail_end()
}

/// The trainable model: an optional backbone tail (layers `from+1 ..= until`) and the head.
pub struct Model {
    pub tail: Option<(Network, usize, usize)>,
    pub tail_vars: Vec<(String, Var)>,
    pub head: Head,
    pub backbone_dropout: f64,
    /// Global pooling of the tail's output before the head (`backbone.pool` when the head reads
    /// a layer above the freeze point; otherwise the cached features are pooled already).
    pub tail_pool: Pool,
    /// Which implementations the training step runs (the run's choice, `Spec::backends`).
    pub backends: crate::backend::Backends,
}

impl Model {
    /// The model a spec trains: the layers of `net` above the freeze point up to `tail_end`
    /// (when `has_tail`; `net` is then required), initialised from their loaded weights, and a
    /// fresh head for `classes`, drawn from the spec's seed (`norm`: the RMS norm of the head's
    /// input rows where known, for `head.init_std = "auto"`).
    pub fn assemble(
        spec: &Spec,
        net: Option<Network>,
        classes: usize,
        norm: Option<f64>,
        device: &Device,
    ) -> Result<Model> {
        let end = spec.tail_end();
        let (tail, tail_vars) = match net {
            Some(mut net) if has_tail(spec) => {
                let vars = net.make_trainable(spec.freeze, end)?;
                (Some((net, spec.freeze, end)), vars)
            }
            None if has_tail(spec) => {
                return Err(crate::Error::Other(
                    "the trainable tail needs the backbone".into(),
                ))
            }
            _ => (None, Vec::new()),
        };
        let mut init_rng = ChaCha8Rng::seed_from_u64(spec.seed);
        let head = Head::new(
            spec.head_input_dim(),
            classes,
            &spec.head,
            norm,
            &mut init_rng,
            device,
        )?;
        Ok(Model {
            tail,
            tail_vars,
            head,
            backbone_dropout: spec.backbone_dropout,
            tail_pool: if has_tail(spec) {
                spec.pool
            } else {
                Pool::None
            },
            backends: spec.backends,
        })
    }

    fn forward(&self, x: &Tensor, train: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
        match (&self.tail, train) {
            (Some((net, from, until)), Some(rng)) => {
                let f = net.forward_train(x, *from, *until, rng, self.backbone_dropout)?;
                let f = global_pool(&f, self.tail_pool)?;
                self.head.forward(&f.flatten_from(1)?, Some(rng))
            }
            (Some((net, from, until)), None) => {
                let f = net.forward_range(x, *from, *until)?;
                let f = global_pool(&f, self.tail_pool)?;
                self.head.forward(&f.flatten_from(1)?, None)
            }
            (None, train) => self.head.forward(&x.flatten_from(1)?, train),
        }
    }

    /// Every trainable variable by name (tail first, then head).
    pub fn named_vars(&self) -> Vec<(String, Var)> {
        let mut v = self.tail_vars.clone();
        v.extend(self.head.named());
        v
    }

    /// Host copies of all trainable variables (for keeping the best epoch).
    pub fn snapshot(&self) -> Result<Vec<(String, Tensor)>> {
        self.named_vars()
            .into_iter()
            .map(|(n, v)| Ok((n, v.as_tensor().copy()?)))
            .collect()
    }

    pub fn restore(&self, snap: &[(String, Tensor)]) -> Result<()> {
        for ((_, v), (_, t)) in self.named_vars().iter().zip(snap) {
            v.set(t)?;
        }
        Ok(())
    }

    /// Predicted class of every sample of a split (argmax of the logits), without dropout.
    pub fn predict(&self, s: &Split, batch: usize) -> Result<Vec<u32>> {
        let mut out = Vec::with_capacity(s.n);
        let mut start = 0;
        while start < s.n {
            let b = batch.min(s.n - start);
            let logits = self.forward(&s.x_range(start, b)?, None)?;
            out.extend(logits.argmax(1)?.to_vec1::<u32>()?);
            start += b;
        }
        Ok(out)
    }

    /// Loss/accuracy/top-5 sums over a split, in batches, without dropout.
    pub fn evaluate(&self, s: &Split, batch: usize) -> Result<Sums> {
        let mut acc: Option<(Tensor, Tensor, Tensor)> = None;
        let mut start = 0;
        while start < s.n {
            let b = batch.min(s.n - start);
            let logits = self.forward(&s.x_range(start, b)?, None)?;
            let (l, c, t) = metrics::batch_sums(&logits, &s.y.narrow(0, start, b)?)?;
            acc = Some(match acc {
                None => (l, c, t),
                Some((a, b2, c2)) => ((a + l)?, (b2 + c)?, (c2 + t)?),
            });
            start += b;
        }
        let (l, c, t) = match acc {
            Some(v) => v,
            None => return Ok(Sums::default()),
        };
        Ok(Sums {
            n: s.n,
            loss: l.to_scalar::<f32>()? as f64,
            correct: c.to_scalar::<f32>()? as f64,
            top5: t.to_scalar::<f32>()? as f64,
        })
    }
}

pub use crate::record::EpochStats;

pub struct FitOutcome {
    pub best_epoch: usize,
    pub best_val: Sums,
    pub epochs_run: usize,
    pub stopped_early: bool,
    pub best_snapshot: Vec<(String, Tensor)>,
}

/// The optimizer over the head's variables and, at `backbone_lr_mult` times the rate, the
/// trainable tail's.
fn optimizer(model: &Model, t: &TrainSection) -> optim::Optimizer {
    let mut groups = vec![(model.head.vars(), 1.0)];
    if !model.tail_vars.is_empty() {
        groups.push((
            model.tail_vars.iter().map(|(_, v)| v.clone()).collect(),
            t.backbone_lr_mult,
        ));
    }
    optim::Optimizer::new(
        optim::Settings {
            kind: t.optimizer,
            beta1: t.beta1,
            beta2: t.beta2,
            eps: t.eps,
            weight_decay: t.weight_decay,
            momentum: t.momentum,
            gpu_fused: model.backends.fused(crate::backend::GpuPath::Optim),
        },
        groups,
    )
}

/// The generators of one run: the order of samples in each epoch, and dropout masks.
struct Rngs {
    shuffle: ChaCha8Rng,
    dropout: ChaCha8Rng,
}

/// One pass over `train` in shuffled mini-batches at rate `lr`; the epoch's training sums.
fn train_epoch(
    model: &Model,
    train: &Split,
    opt: &mut optim::Optimizer,
    lr: f64,
    t: &TrainSection,
    rngs: &mut Rngs,
) -> Result<Sums> {
    let manual = model.tail.is_none() && step::supported(&model.head);
    let mut order: Vec<u32> = (0..train.n as u32).collect();
    order.shuffle(&mut rngs.shuffle);
    // (loss, top-1, top-5) summed over the epoch, as one (3,) vector
    let mut sums: Option<Tensor> = None;
    for chunk in order.chunks(t.batch_size) {
        let (xb, yb) = train.take(chunk)?;
        let batch = if manual {
            let out = step::head_step(
                &model.head,
                &xb,
                &yb,
                t.label_smoothing,
                &mut rngs.dropout,
                &model.backends,
            )?;
            opt.step_with(&out.grads, lr)?;
            out.sums
        } else {
            let logits = model.forward(&xb, Some(&mut rngs.dropout))?;
            let loss = metrics::cross_entropy(&logits, &yb, t.label_smoothing)?;
            let grads = loss.backward()?;
            opt.step(&grads, lr)?;
            let l = (loss.detach() * chunk.len() as f64)?;
            let (_, c, k) = metrics::batch_sums(&logits.detach(), &yb)?;
            step::sums3(&l, &c, &k)?
        };
        // running sums stay on the device: no sync per step
        sums = Some(match sums {
            None => batch,
            Some(a) => (a + batch)?,
        });
    }
    Ok(match sums {
        Some(s) => match s.to_vec1::<f32>()?.as_slice() {
            [loss, correct, top5] => Sums {
                n: train.n,
                loss: *loss as f64,
                correct: *correct as f64,
                top5: *top5 as f64,
            },
            v => {
                return Err(crate::Error::Other(format!(
                    "training sums: 3 values expected, got {}",
                    v.len()
                )))
            }
        },
        None => Sums::default(),
    })
}

/// Train for `spec.train.epochs` epochs (or until early stopping); `on_epoch` sees each epoch
/// as it ends (the results writer flushes a CSV row there) and may stop the run by returning false.
pub fn fit(
    spec: &Spec,
    model: &Model,
    train: &Split,
    val: &Split,
    device: &Device,
    mut on_epoch: impl FnMut(&EpochStats, &Model) -> Result<bool>,
) -> Result<FitOutcome> {
    let t = &spec.train;
    let mut opt = optimizer(model, t);
    let mut rngs = Rngs {
        shuffle: ChaCha8Rng::seed_from_u64(spec.seed ^ 0x5af_f1e),
        dropout: ChaCha8Rng::seed_from_u64(spec.seed ^ 0xd_0d0),
    };
    let eval_batch = t.batch_size.max(512);
    let mut best: Option<(usize, Sums, Snapshot)> = None;
    let mut since_best = 0;
    let mut epochs_run = 0;
    let mut stopped_early = false;
    for epoch in 0..t.epochs {
        let lr = schedule::lr_at(t.schedule, t.lr, epoch, t.epochs, t.step_size, t.gamma);
        device.synchronize()?;
        let t0 = Instant::now();
        let train_sums = train_epoch(model, train, &mut opt, lr, t, &mut rngs)?;
        device.synchronize()?;
        let train_seconds = t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let val_sums = model.evaluate(val, eval_batch)?;
        device.synchronize()?;
        let eval_seconds = t1.elapsed().as_secs_f64();
        epochs_run = epoch + 1;

        let better = match (&best, t.early_stopping.metric) {
            (None, _) => true,
            (Some((_, b, _)), Metric::ValAcc) => val_sums.acc() > b.acc(),
            (Some((_, b, _)), Metric::ValLoss) => val_sums.loss() < b.loss(),
        };
        if better {
            best = Some((epoch + 1, val_sums, model.snapshot()?));
            since_best = 0;
        } else {
            since_best += 1;
        }
        let stats = EpochStats {
            epoch: epoch + 1,
            lr,
            train: train_sums,
            val: val_sums,
            train_seconds,
            eval_seconds,
            improved: better,
        };
        if !on_epoch(&stats, model)? {
            stopped_early = true;
            break;
        }
        if t.early_stopping.patience > 0 && since_best >= t.early_stopping.patience {
            tracing::info!(
                "early stopping after epoch {}: no improvement for {since_best} epochs",
                epoch + 1
            );
            stopped_early = true;
            break;
        }
    }
    let (best_epoch, best_val, best_snapshot) = match best {
        Some(b) => b,
        None => (0, Sums::default(), model.snapshot()?),
    };
    Ok(FitOutcome {
        best_epoch,
        best_val,
        epochs_run,
        stopped_early,
        best_snapshot,
    })
}
