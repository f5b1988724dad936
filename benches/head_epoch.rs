//! Head-training epoch time on cached features, through runner's real training loop
//! (`train::fit`): 34,799 x 4096 features, 43 classes, batch 128, Adam, linear head — the seed's
//! GTSRB head. `bench/head.sh` runs it interleaved with the same workload in PyTorch.
//!
//!     cargo bench --bench head_epoch -- [epochs] [hidden]

use std::path::Path;
use std::time::Instant;

use candle_core::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use runner::train::{self, head::Head, Model, Split};

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let epochs: usize = args.first().and_then(|a| a.parse().ok()).unwrap_or(3);
    let hidden: Vec<usize> = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .map(|h| vec![h])
        .unwrap_or_default();
    // as `runner` does on the CPU: training runs on a worker of a pool that flushes denormals
    let (n, d, k, bs) = (34_799usize, 4096usize, 43usize, 128usize);
    let dev = Device::Cpu;
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let x: Vec<f32> = (0..n * d).map(|_| rng.gen::<f32>()).collect();
    let y: Vec<i64> = (0..n).map(|_| rng.gen_range(0..k as i64)).collect();
    let split = Split::new(Tensor::from_vec(x, (n, d), &dev).unwrap(), &y, &dev).unwrap();
    let val = Split::new(split.x_range(0, 1024).unwrap(), &y[..1024], &dev).unwrap();
    let text =
        format!("[train]\nepochs = {epochs}\nbatch_size = {bs}\noptimizer = \"adam\"\nlr = 1e-3\n");
    let spec = runner::spec::load_str(Path::new("bench.toml"), &text, &[], Vec::new()).unwrap();
    let head = Head::new(
        d,
        k,
        &runner::spec::HeadSection {
            hidden,
            ..Default::default()
        },
        None,
        &mut rng,
        &dev,
    )
    .unwrap();
    let model = Model {
        tail: None,
        tail_vars: vec![],
        head,
        backbone_dropout: 0.0,
        tail_pool: runner::spec::Pool::None,
        backends: Default::default(),
    };
    let mut last = Instant::now();
    runner::threads::in_worker_pool(|| {
        train::fit(&spec, &model, &split, &val, &dev, |s, _| {
            println!(
            "runner head epoch {}: train {:.4} s (total {:.4} s incl. eval of 1024), loss {:.4}",
            s.epoch,
            s.train_seconds,
            last.elapsed().as_secs_f64(),
            s.train.loss()
        );
            last = Instant::now();
            Ok(true)
        })
    })
    .unwrap();
}
