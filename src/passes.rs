//! One backbone pass for many cut points: the points of a sweep (or the specs of a layer study)
//! that read the same backbone, weights, data and preprocessing at different cut points
//! (`"backbone.output" = ["pool2", "pool5", "fc6", "fc7"]`) have their features computed
//! together. Each image is read and run through the network once, and every cut point's
//! features (pooled or not, as each point says) are streamed into that point's own cache entry:
//! the entry, bit for bit, that the point's own run would write, so the runs that follow (and
//! any later single run) find it stored.
//!
//! A pass goes through the layers once, stopping at each cut point in network order
//! (`Extractor::for_range_cuts`); memory holds one batch of every cut point's map, and the
//! entries are written as the batches come.

use std::collections::BTreeMap;
use std::sync::Arc;

use candle_core::Device;

use crate::cache::{CacheKey, EntryWriter, FeatureCache, ShardInfo};
use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::features::{load_network, load_run_data, shard_range, Extractor, FeatureSource};
use crate::progress::{Mode, Task};
use crate::spec::{Pool, Spec};

/// One cache entry a pass writes: the features at cut point `cut`, pooled with `pool`.
struct Out {
    cut: usize,
    pool: Pool,
    shape: Vec<usize>,
    key: CacheKey,
    digest: String,
}

/// Features of one dataset at several cut points, from one network.
struct Pass<'s> {
    /// The first point of the pass: its network, batch and device serve them all.
    spec: &'s Spec,
    what: &'static str,
    data: Arc<Dataset>,
    outs: Vec<Out>,
}

/// What a pass shares: every part of the cache key but the cut point, and what decides how the
/// network computes (batch, implementations, device). Points that agree on all of it compute
/// the same values at a common cut point, so one network serves them.
fn pass_key(spec: &Spec, key: &CacheKey, device: &Device) -> String {
    format!(
        "{}|{}|{}|{}|{}|batch={}|{:?}|{:?}|tf32={}",
        key.weights,
        key.arch,
        key.data,
        key.preprocessing,
        key.dtype,
        spec.extract_batch_for(device),
        spec.backends,
        spec.device,
        spec.tf32
    )
}

/// Whether the specs read their frozen features at more than one cut point (or pooling), the
/// case a shared pass is for. Cheap: reads no data.
pub fn differ_in_cut(specs: &[&Spec]) -> bool {
    let cut = |s: &Spec| {
        (
            s.arch.name(),
            s.freeze,
            s.pool_before_cache().then_some(s.pool),
        )
    };
    specs.windows(2).any(|w| cut(w[0]) != cut(w[1]))
}

/// Group the feature sets the specs' runs read into passes (datasets are loaded, and hashed,
/// for their cache keys). Entries several specs share are listed once.
fn plan<'s>(specs: &[&'s Spec], device: &Device) -> Result<Vec<Pass<'s>>> {
    let mut passes: BTreeMap<String, Pass<'s>> = BTreeMap::new();
    for &spec in specs {
        let data = load_run_data(spec)?;
        let sets = [
            ("train", Some(data.pool)),
            ("val", data.val_file.map(Arc::new)),
            ("test", data.test_file.map(Arc::new)),
        ];
        let mut src = FeatureSource::new(spec, device, Mode::Quiet);
        for (what, d) in sets {
            let Some(d) = d else { continue };
            let key = src.key(&d)?;
            let pk = format!("{what}|{}", pass_key(spec, &key, device));
            let pass = passes.entry(pk).or_insert_with(|| Pass {
                spec,
                what,
                data: d.clone(),
                outs: Vec::new(),
            });
            let digest = key.digest();
            if pass.outs.iter().all(|o| o.digest != digest) {
                pass.outs.push(Out {
                    cut: spec.freeze,
                    pool: if spec.pool_before_cache() {
                        spec.pool
                    } else {
                        Pool::None
                    },
                    shape: spec.feature_shape(),
                    key,
                    digest,
                });
            }
        }
    }
    Ok(passes.into_values().collect())
}

/// Before the points of a sweep run one by one: compute, one pass per dataset, the feature
/// entries of every point that the cache lacks, wherever two or more cut points of the same
/// backbone and data are missing. (A single missing entry is left to its point's run, which
/// computes the same.) Returns how many entries were written.
pub fn prepare(specs: &[&Spec], mode: Mode) -> Result<usize> {
    if specs.len() < 2 || !differ_in_cut(specs) || specs.iter().any(|s| s.cache_dir.is_none()) {
        return Ok(0);
    }
    crate::threads::in_worker_pool(|| {
        let device = crate::device::select(specs[0].device, specs[0].tf32)?;
        let mut written = 0;
        for pass in plan(specs, &device)? {
            written += run_pass(&pass, &device, mode, None, 2)?;
        }
        Ok(written)
    })
}

/// `runner extract-shard` over a sweep: shard `index` of `count` of every entry the points
/// read, one pass per dataset for all cut points at once. Returns the shards written.
pub fn extract_shard(specs: &[&Spec], index: usize, count: usize, mode: Mode) -> Result<usize> {
    if count == 0 || index >= count {
        return Err(Error::Spec(format!(
            "shard {index} of {count}: the index must be below the count (e.g. 0/4 .. 3/4)"
        )));
    }
    if specs.iter().any(|s| s.cache_dir.is_none()) {
        return Err(Error::Spec(
            "sharded extraction stores its shards in the feature cache: set run.cache = true"
                .into(),
        ));
    }
    crate::threads::in_worker_pool(|| {
        let Some(first) = specs.first() else {
            return Ok(0);
        };
        let device = crate::device::select(first.device, first.tf32)?;
        let mut written = 0;
        for pass in plan(specs, &device)? {
            written += run_pass(&pass, &device, mode, Some((index, count)), 1)?;
        }
        Ok(written)
    })
}

/// Compute the entries of `pass` that are not stored (whole entries, or with `shard` one shard
/// of each), if at least `min` are missing. Holds the lock of every entry it writes, so another
/// process computing one of them is waited for, not repeated.
fn run_pass(
    pass: &Pass,
    device: &Device,
    mode: Mode,
    shard: Option<(usize, usize)>,
    min: usize,
) -> Result<usize> {
    let spec = pass.spec;
    let cache = spec
        .cache_dir
        .as_deref()
        .map(FeatureCache::new)
        .ok_or_else(|| Error::Spec("a shared pass writes to the feature cache".into()))?;
    // (an entry file counts as stored without reading it: a damaged one is found, and
    // recomputed, by its point's run; a complete set of shards is checked)
    let stored = |o: &Out| match shard {
        None => cache.path_for(&o.digest).exists() || cache.open(&o.digest).is_ok(),
        Some((i, n)) => {
            cache.path_for(&o.digest).exists() || cache.shard_path(&o.digest, i, n).exists()
        }
    };
    if pass.outs.iter().filter(|o| !stored(o)).count() < min {
        return Ok(0);
    }
    // locks in one order (by digest), so two passes never wait for each other
    let mut order: Vec<&Out> = pass.outs.iter().collect();
    order.sort_by(|a, b| a.digest.cmp(&b.digest));
    let _locks = order
        .iter()
        .map(|o| cache.lock(&o.digest))
        .collect::<Result<Vec<_>>>()?;
    let outs: Vec<&Out> = pass.outs.iter().filter(|o| !stored(o)).collect();
    if outs.is_empty() {
        return Ok(0);
    }
    // the network up to the deepest cut point; layers below are built as for any run
    let deepest = outs.iter().map(|o| o.cut).max().unwrap_or(spec.freeze);
    let mut net_spec = spec.clone();
    (net_spec.freeze, net_spec.output) = (deepest, deepest);
    crate::spec::budget::check_memory(&net_spec)?;
    let data = &pass.data;
    let batch = spec.extract_batch_for(device);
    let range = match shard {
        None => 0..data.n,
        Some((i, n)) => shard_range(data.n, batch, i, n),
    };
    let mut writers = outs
        .iter()
        .map(|o| match shard {
            None => cache.writer(&o.digest, &o.key, &o.shape),
            Some((index, count)) => {
                let info = ShardInfo {
                    index,
                    count,
                    first: range.start,
                    samples: range.len(),
                };
                cache.shard_writer(&o.digest, &o.key, &o.shape, info)
            }
        })
        .collect::<Result<Vec<EntryWriter>>>()?;
    let net = load_network(&net_spec, device)?;
    let ex = Extractor::new(&net_spec, &net, batch, device);
    let cuts: Vec<(usize, Pool)> = outs.iter().map(|o| (o.cut, o.pool)).collect();
    let names: Vec<&str> = outs.iter().map(|o| o.key.freeze.as_str()).collect();
    let label = match shard {
        None => format!("extract {} at {}", pass.what, names.join(", ")),
        Some((i, n)) => format!(
            "extract {} shard {i}/{n} at {}",
            pass.what,
            names.join(", ")
        ),
    };
    tracing::info!("{label}: one pass for {} cut points", outs.len());
    let mut task = Task::new(mode, &label, range.len() as u64, "img");
    ex.for_range_cuts(data, range, &mut task, &cuts, |kept, fs| {
        let labels: Vec<i64> = kept.iter().map(|&i| data.labels[i]).collect();
        let index: Vec<u64> = kept.iter().map(|&i| i as u64).collect();
        for (w, f) in writers.iter_mut().zip(fs) {
            w.push(&f.flatten_all()?.to_vec1::<f32>()?, &labels, &index)?;
        }
        Ok(())
    })?;
    task.finish();
    for w in writers {
        let p = w.finish()?;
        tracing::info!("{}: stored features in {}", pass.what, p.display());
    }
    Ok(outs.len())
}
