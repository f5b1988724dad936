//! Backbones: one file per architecture, each a forward pass that can stop at any named cut
//! point (`forward_until`) over weights from `weights`. What each architecture looks like (cut
//! points, shapes, preprocessing) is described in `crate::arch`, re-exported here; `build` is
//! where an `Arch` meets its code.

pub mod act;
pub mod alexnet;
mod conv_bn;
pub mod convnext;
mod cpu_conv;
mod cpu_depthwise;
mod cpu_norm;
pub mod efficientnet;
pub mod layers;
pub mod resnet;
pub mod vgg;
pub mod vit;

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

pub use crate::arch::{Arch, ParamKind, ParamSpec, Preprocess};
pub use crate::backend::Backends;
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// Dropout while training: the generator of its masks and the drop probability.
pub type Dropout<'a> = Option<(&'a mut ChaCha8Rng, f64)>;

/// What every architecture's forward pass provides. Cut points are indices into
/// `Arch::layers()`; index 0 is the preprocessed input.
pub trait Backbone: Send + Sync {
    /// Cut points `from+1 ..= until` applied to `x` (the output of cut point `from`); trainable
    /// layers apply `dropout` where the architecture was trained with it.
    fn forward_range(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        dropout: Dropout,
    ) -> Result<Tensor>;

    /// The current tensors of a parameterised layer, by full name.
    fn tensors(&self, layer: &str) -> Vec<(String, Tensor)>;

    /// Make the layers of cut points `after+1 ..= until` trainable, initialised from their
    /// loaded weights; returns the variables by name.
    fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>>;

    /// Store the frozen layers of cut points `1..=until` in `dtype`.
    fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()>;
}

/// The forward pass of `arch` with the weights of cut points `1..=last`: the other of the two
/// `match`es over architectures (the first is `Arch::desc`).
fn build(
    arch: Arch,
    weights: &WeightSet,
    device: &Device,
    last: usize,
    how: (&Preprocess, Backends),
) -> Result<Box<dyn Backbone>> {
    let resnet = |depth| resnet::ResNet::new_until(depth, weights, device, last, how);
    let efficientnet = |v| efficientnet::EfficientNet::new_until(v, weights, device, last, how);
    Ok(match arch {
        Arch::AlexNet => Box::new(alexnet::AlexNet::new_until(weights, device, last, how)?),
        Arch::Vgg16 => Box::new(vgg::Vgg::new_until(16, weights, device, last, how)?),
        Arch::Vgg19 => Box::new(vgg::Vgg::new_until(19, weights, device, last, how)?),
        Arch::ResNet18 => Box::new(resnet(18)?),
        Arch::ResNet34 => Box::new(resnet(34)?),
        Arch::ResNet50 => Box::new(resnet(50)?),
        Arch::ResNet101 => Box::new(resnet(101)?),
        Arch::ResNet152 => Box::new(resnet(152)?),
        Arch::EfficientNetB0 => Box::new(efficientnet(efficientnet::Variant::B0)?),
        Arch::EfficientNetLite0 => Box::new(efficientnet(efficientnet::Variant::Lite0)?),
        Arch::ConvNextTiny => Box::new(convnext::ConvNext::new_until(weights, device, last, how)?),
        Arch::VitB16 => Box::new(vit::Vit::new_until(weights, device, last, how)?),
    })
}

/// A backbone with its weights on a device.
pub struct Network {
    arch: Arch,
    inner: Box<dyn Backbone>,
}

impl Network {
    /// Every layer, the architecture's preprocessing, the default implementations.
    pub fn new(arch: Arch, weights: &WeightSet, device: &Device) -> Result<Network> {
        let how = (&arch.preprocess(), Backends::default());
        Self::new_until(arch, weights, device, arch.layers().len() - 1, how)
    }

    /// The network with the weights of cut points `1..=last` only: layers above are neither
    /// loaded nor run (`backbone.output`). `how`: the input transform of raw 0..255 RGB pixels
    /// (the architecture's, or `backbone.mean`/`std`'s) and which implementations run.
    pub fn new_until(
        arch: Arch,
        weights: &WeightSet,
        device: &Device,
        last: usize,
        how: (&Preprocess, Backends),
    ) -> Result<Network> {
        Ok(Network {
            arch,
            inner: build(arch, weights, device, last, how)?,
        })
    }

    /// The network a spec runs: its architecture up to `backbone.output`, with its
    /// preprocessing and backends.
    pub fn for_spec(
        spec: &crate::spec::Spec,
        weights: &WeightSet,
        device: &Device,
    ) -> Result<Network> {
        let how = (&spec.preprocess, spec.backends);
        Self::new_until(spec.arch, weights, device, spec.output, how)
    }

    pub fn arch(&self) -> Arch {
        self.arch
    }

    fn check_range(&self, from: usize, until: usize) -> Result<()> {
        if from > until || until >= self.arch.layers().len() {
            return Err(Error::Other(format!(
                "invalid layer range {from}..={until} for {}",
                self.arch.name()
            )));
        }
        Ok(())
    }

    /// Run cut points `from+1 ..= until`; `from = 0` starts at the preprocessed input `x`
    /// (NCHW, the architecture's input size).
    pub fn forward_range(&self, x: &Tensor, from: usize, until: usize) -> Result<Tensor> {
        self.check_range(from, until)?;
        self.inner.forward_range(x, from, until, None)
    }

    /// Forward through cut points `from+1 ..= until` while training: trainable layers apply
    /// dropout `p` with masks from `rng` where the architecture has it.
    pub fn forward_train(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        rng: &mut ChaCha8Rng,
        p: f64,
    ) -> Result<Tensor> {
        self.check_range(from, until)?;
        self.inner.forward_range(x, from, until, Some((rng, p)))
    }

    /// The current tensors of a parameterised layer, by full name (empty when not loaded).
    pub fn tensors(&self, layer: &str) -> Vec<(String, Tensor)> {
        self.inner.tensors(layer)
    }

    /// Make cut points `after+1 ..= until` trainable, initialised from their loaded weights.
    pub fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        self.inner.make_trainable(after, until)
    }

    /// Store the frozen cut points `1..=until` in `dtype` (bf16/f16 for fast extraction on a
    /// GPU). Layers take their input in their weights' format, so a cast network still accepts
    /// f32 input, and a trainable f32 tail accepts a cast part's output.
    pub fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()> {
        self.inner.cast_frozen(until, dtype)
    }

    /// Run from the input up to and including cut point `layer`.
    pub fn forward_until(&self, x: &Tensor, layer: usize) -> Result<Tensor> {
        self.forward_range(x, 0, layer)
    }
}
