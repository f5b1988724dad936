//! What an epoch produces: loss/accuracy sums over a split and the per-epoch record that
//! training emits and the results writer stores. It sits below both `train` and `results`.

/// Sums over a set of samples.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sums {
    pub n: usize,
    pub loss: f64,
    pub correct: f64,
    pub top5: f64,
}

impl Sums {
    pub fn loss(&self) -> f64 {
        self.loss / self.n.max(1) as f64
    }
    pub fn acc(&self) -> f64 {
        self.correct / self.n.max(1) as f64
    }
    pub fn top5(&self) -> f64 {
        self.top5 / self.n.max(1) as f64
    }
}

/// What one epoch produced.
#[derive(Debug, Clone)]
pub struct EpochStats {
    pub epoch: usize,
    pub lr: f64,
    pub train: Sums,
    pub val: Sums,
    pub train_seconds: f64,
    pub eval_seconds: f64,
    pub improved: bool,
}
