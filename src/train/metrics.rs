//! Loss and metrics: softmax cross-entropy with optional label smoothing; accuracy and top-5.

use candle_core::{DType, Tensor, D};

use crate::error::Result;

/// Mean softmax cross-entropy of `logits` (B, K) against `labels` (B,) u32, with label
/// smoothing `eps`: targets `(1 - eps) * onehot + eps / K`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor, eps: f64) -> Result<Tensor> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let picked = logp.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    let nll = picked.mean_all()?.neg()?;
    if eps <= 0.0 {
        return Ok(nll);
    }
    let uniform = logp.mean(D::Minus1)?.mean_all()?.neg()?;
    Ok(((nll * (1.0 - eps))? + (uniform * eps)?)?)
}

pub use crate::record::Sums;

/// Per-batch (summed cross-entropy without smoothing, correct count, top-5 count) as device
/// scalars, so no host sync is needed until the end of an epoch.
pub fn batch_sums(logits: &Tensor, labels: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
    let logp = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let lab = labels.unsqueeze(1)?;
    let loss = logp.gather(&lab, 1)?.sum_all()?.neg()?;
    let true_logit = logits.gather(&lab, 1)?;
    // rank of the true class = number of classes with a strictly larger logit
    let above = logits
        .broadcast_gt(&true_logit)?
        .to_dtype(DType::F32)?
        .sum(D::Minus1)?;
    let correct = above.eq(0f64)?.to_dtype(DType::F32)?.sum_all()?;
    let top5 = above.lt(5f64)?.to_dtype(DType::F32)?.sum_all()?;
    Ok((loss, correct, top5))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn cross_entropy_and_metrics_by_hand() {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[2.0f32, 1.0, 0.0], [0.0, 0.0, 3.0]], &dev).unwrap();
        let labels = Tensor::new(&[0u32, 1], &dev).unwrap();
        let l: f32 = cross_entropy(&logits, &labels, 0.0)
            .unwrap()
            .to_scalar()
            .unwrap();
        let lse1 = (2f32.exp() + 1f32.exp() + 1.0).ln();
        let lse2 = (2.0 + 3f32.exp()).ln();
        let want = ((lse1 - 2.0) + lse2) / 2.0;
        assert!((l - want).abs() < 1e-5);
        let ls: f32 = cross_entropy(&logits, &labels, 0.3)
            .unwrap()
            .to_scalar()
            .unwrap();
        let uni = ((lse1 * 3.0 - 3.0) / 3.0 + (lse2 * 3.0 - 3.0) / 3.0) / 2.0;
        assert!((ls - (0.7 * want + 0.3 * uni)).abs() < 1e-5);
        let (s, c, t5) = batch_sums(&logits, &labels).unwrap();
        assert!((s.to_scalar::<f32>().unwrap() - 2.0 * want).abs() < 1e-4);
        assert_eq!(c.to_scalar::<f32>().unwrap(), 1.0);
        assert_eq!(t5.to_scalar::<f32>().unwrap(), 2.0);
    }
}
