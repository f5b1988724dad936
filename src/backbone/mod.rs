//! Backbones: one file per architecture, each a forward pass that can stop at any named layer
//! (`forward_until`) over weights from `weights`. What each architecture looks like (layer
//! names, shapes) is described in `crate::arch`, re-exported here.

pub mod alexnet;
mod cpu_conv;
pub mod gpu_conv;
pub mod gpu_fused;
pub mod layers;
pub mod vgg;

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

pub use crate::arch::{Arch, ParamKind, ParamSpec};
use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// A backbone with its weights on a device.
pub enum Network {
    AlexNet(alexnet::AlexNet),
    Vgg(Arch, vgg::Vgg),
}

impl Network {
    pub fn new(arch: Arch, weights: &WeightSet, device: &Device) -> Result<Network> {
        Self::new_until(arch, weights, device, arch.layers().len() - 1)
    }

    /// The network with the weights of layers `1..=last` only: layers above are neither
    /// loaded nor run (`backbone.output`).
    pub fn new_until(
        arch: Arch,
        weights: &WeightSet,
        device: &Device,
        last: usize,
    ) -> Result<Network> {
        match arch {
            Arch::AlexNet => Ok(Network::AlexNet(alexnet::AlexNet::new_until(
                weights, device, last,
            )?)),
            a => Ok(Network::Vgg(
                a,
                vgg::Vgg::new_until(a.vgg_depth(), weights, device, last)?,
            )),
        }
    }

    pub fn arch(&self) -> Arch {
        match self {
            Network::AlexNet(_) => Arch::AlexNet,
            Network::Vgg(a, _) => *a,
        }
    }

    /// Run layers `from+1 ..= until` (indices into `Arch::layers()`); `from = 0` starts at the
    /// preprocessed input `x` (NCHW f32, the architecture's input size).
    pub fn forward_range(&self, x: &Tensor, from: usize, until: usize) -> Result<Tensor> {
        if from > until || until >= self.arch().layers().len() {
            return Err(Error::Other(format!(
                "invalid layer range {from}..={until} for {}",
                self.arch().name()
            )));
        }
        match self {
            Network::AlexNet(n) => n.forward_range(x, from, until, None),
            Network::Vgg(_, n) => n.forward_range(x, from, until, None),
        }
    }

    /// Forward through layers `from+1 ..= until` while training: trainable fc layers apply
    /// dropout `p` with masks from `rng`.
    pub fn forward_train(
        &self,
        x: &Tensor,
        from: usize,
        until: usize,
        rng: &mut ChaCha8Rng,
        p: f64,
    ) -> Result<Tensor> {
        match self {
            Network::AlexNet(n) => n.forward_range(x, from, until, Some((rng, p))),
            Network::Vgg(_, n) => n.forward_range(x, from, until, Some((rng, p))),
        }
    }

    /// The current (weight, bias) of a parameterised layer, by name.
    pub fn param(&self, layer: &str) -> Option<(Tensor, Tensor)> {
        match self {
            Network::AlexNet(n) => n.param(layer),
            Network::Vgg(_, n) => n.param(layer),
        }
    }

    /// Make layers `after+1 ..= until` trainable, initialised from their loaded weights.
    pub fn make_trainable(&mut self, after: usize, until: usize) -> Result<Vec<(String, Var)>> {
        match self {
            Network::AlexNet(n) => n.make_trainable(after, until),
            Network::Vgg(_, n) => n.make_trainable(after, until),
        }
    }

    /// Store the frozen layers `1..=until` in `dtype` (bf16/f16 for fast extraction on a GPU).
    /// Convolutions and fc layers take their input in their weights' format, so a cast network
    /// still accepts f32 input, and a trainable f32 tail accepts a cast part's output.
    pub fn cast_frozen(&mut self, until: usize, dtype: candle_core::DType) -> Result<()> {
        match self {
            Network::AlexNet(n) => n.cast_frozen(until, dtype),
            Network::Vgg(_, n) => n.cast_frozen(until, dtype),
        }
    }

    /// Run from the input up to and including `layer`.
    pub fn forward_until(&self, x: &Tensor, layer: usize) -> Result<Tensor> {
        self.forward_range(x, 0, layer)
    }
}
