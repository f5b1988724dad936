//! Layer operations with TensorFlow's semantics, shared by the backbones.

use candle_core::{Tensor, D};

use crate::error::Result;

/// The weight and bias of one conv or fc layer: frozen tensors, or (after `make_trainable`)
/// the tensors of optimizer variables.
pub struct Param {
    pub w: Tensor,
    pub b: Tensor,
    pub trainable: bool,
}

impl Param {
    /// `<name>.weight` and `<name>.bias` from a loaded set.
    pub fn load(
        weights: &crate::weights::WeightSet,
        name: &str,
        device: &candle_core::Device,
    ) -> Result<Param> {
        Ok(Param {
            w: weights.tensor(&format!("{name}.weight"), device)?,
            b: weights.tensor(&format!("{name}.bias"), device)?,
            trainable: false,
        })
    }

    /// Turn the weights into optimizer variables (the tensors then share their storage).
    pub fn make_trainable(&mut self, name: &str) -> Result<Vec<(String, candle_core::Var)>> {
        let w = candle_core::Var::from_tensor(&self.w)?;
        let b = candle_core::Var::from_tensor(&self.b)?;
        self.w = w.as_tensor().clone();
        self.b = b.as_tensor().clone();
        self.trainable = true;
        Ok(vec![
            (format!("{name}.weight"), w),
            (format!("{name}.bias"), b),
        ])
    }
}

/// TensorFlow "SAME" padding for one spatial axis: (before, after).
pub fn same_padding(input: usize, kernel: usize, stride: usize) -> (usize, usize) {
    let out = input.div_ceil(stride);
    let total = ((out - 1) * stride + kernel).saturating_sub(input);
    (total / 2, total - total / 2)
}

/// 2-D convolution (NCHW input, OIHW kernel) with bias, TF "SAME" or "VALID" padding, and
/// `groups` as in the seed's `conv()` (input channels and output kernels split in equal halves).
pub fn conv2d(
    x: &Tensor,
    w: &Tensor,
    b: &Tensor,
    stride: usize,
    same: bool,
    groups: usize,
) -> Result<Tensor> {
    let (_, _, h, wd) = x.dims4()?;
    let (_, _, kh, kw) = w.dims4()?;
    let y = if same {
        let (pt, pb) = same_padding(h, kh, stride);
        let (pl, pr) = same_padding(wd, kw, stride);
        if pt == pb && pl == pr && pt == pl {
            x.conv2d(w, pt, stride, 1, groups)?
        } else {
            let xp = x.pad_with_zeros(2, pt, pb)?.pad_with_zeros(3, pl, pr)?;
            xp.conv2d(w, 0, stride, 1, groups)?
        }
    } else {
        x.conv2d(w, 0, stride, 1, groups)?
    };
    let c = b.dim(0)?;
    Ok(y.broadcast_add(&b.reshape((1, c, 1, 1))?)?)
}

/// TensorFlow's local response normalization over channels (dim 1 of NCHW):
/// `x / (bias + alpha * sum_{c-r..c+r} x^2) ^ beta` — alpha is not divided by the window size.
pub fn lrn(x: &Tensor, radius: usize, alpha: f64, beta: f64, bias: f64) -> Result<Tensor> {
    let c = x.dim(1)?;
    let sq = x.sqr()?.pad_with_zeros(1, radius, radius)?;
    let mut sum = sq.narrow(1, 0, c)?;
    for k in 1..=2 * radius {
        sum = (sum + sq.narrow(1, k, c)?)?;
    }
    let denom = sum.affine(alpha, bias)?.powf(beta)?;
    Ok(x.div(&denom)?)
}

/// Max pooling with a square window, TF "VALID" padding.
pub fn max_pool_valid(x: &Tensor, k: usize, stride: usize) -> Result<Tensor> {
    Ok(x.max_pool2d_with_stride(k, stride)?)
}

/// Fully connected layer: `x @ w^T + b` with `w` as `[out, in]`.
pub fn linear(x: &Tensor, w: &Tensor, b: &Tensor) -> Result<Tensor> {
    Ok(x.matmul(&w.t()?)?.broadcast_add(b)?)
}

/// Flatten all but the batch dimension.
pub fn flatten(x: &Tensor) -> Result<Tensor> {
    Ok(x.flatten_from(1)?)
}

/// Softmax over the last dimension (for predictions).
pub fn softmax(x: &Tensor) -> Result<Tensor> {
    Ok(candle_nn::ops::softmax(x, D::Minus1)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_padding_matches_tensorflow() {
        assert_eq!(same_padding(227, 11, 4), (4, 4));
        assert_eq!(same_padding(28, 5, 1), (2, 2));
        assert_eq!(same_padding(13, 3, 1), (1, 1));
        assert_eq!(same_padding(224, 11, 4), (3, 4));
    }

    #[test]
    fn lrn_matches_hand_computation() {
        let dev = candle_core::Device::Cpu;
        // one pixel, 6 channels
        let v = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let x = Tensor::from_slice(&v, (1, 6, 1, 1), &dev).unwrap();
        let y: Vec<f32> = lrn(&x, 2, 0.1, 0.75, 1.0)
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        for c in 0..6usize {
            let lo = c.saturating_sub(2);
            let hi = (c + 2).min(5);
            let s: f32 = v[lo..=hi].iter().map(|a| a * a).sum();
            let want = v[c] / (1.0f32 + 0.1 * s).powf(0.75);
            assert!(
                (y[c] - want).abs() < 1e-6,
                "channel {c}: {} vs {want}",
                y[c]
            );
        }
    }
}
