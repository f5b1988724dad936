//! Backbones: one file per architecture. Each exposes its layer names (the seed's), the shapes
//! of its parameters (used by `weights` to check and convert files), and a forward pass that can
//! stop at any named layer.

pub mod alexnet;
mod cpu_conv;
pub mod layers;
pub mod vgg;

use candle_core::{Device, Tensor, Var};
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};
use crate::weights::WeightSet;

/// The architectures runner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    AlexNet,
    Vgg16,
    Vgg19,
}

/// Shape of one parameterised layer, in runner's (candle) layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamKind {
    /// weight `[cout, cin / groups, kh, kw]`, bias `[cout]`
    Conv {
        kh: usize,
        kw: usize,
        cin: usize,
        cout: usize,
        groups: usize,
    },
    /// weight `[cout, cin]`, bias `[cout]`; `flatten_chw` is the feature map flattened into the
    /// input (c, h, w), whose row order differs between TensorFlow (NHWC) and candle (NCHW).
    Fc {
        cin: usize,
        cout: usize,
        flatten_chw: Option<(usize, usize, usize)>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub layer: &'static str,
    pub kind: ParamKind,
}

impl ParamSpec {
    /// `[cout, cin/groups, kh, kw]` or `[cout, cin]`
    pub fn weight_shape(&self) -> Vec<usize> {
        match self.kind {
            ParamKind::Conv {
                kh,
                kw,
                cin,
                cout,
                groups,
            } => vec![cout, cin / groups, kh, kw],
            ParamKind::Fc { cin, cout, .. } => vec![cout, cin],
        }
    }

    /// The same weight as the seed's files store it: HWIO or `[in, out]`.
    pub fn seed_weight_shape(&self) -> Vec<usize> {
        match self.kind {
            ParamKind::Conv {
                kh,
                kw,
                cin,
                cout,
                groups,
            } => vec![kh, kw, cin / groups, cout],
            ParamKind::Fc { cin, cout, .. } => vec![cin, cout],
        }
    }

    pub fn bias_len(&self) -> usize {
        match self.kind {
            ParamKind::Conv { cout, .. } | ParamKind::Fc { cout, .. } => cout,
        }
    }
}

impl Arch {
    pub const ALL: &'static [Arch] = &[Arch::AlexNet, Arch::Vgg16, Arch::Vgg19];

    pub fn name(&self) -> &'static str {
        match self {
            Arch::AlexNet => "alexnet",
            Arch::Vgg16 => "vgg16",
            Arch::Vgg19 => "vgg19",
        }
    }

    pub fn parse(s: &str) -> Option<Arch> {
        match s.to_ascii_lowercase().as_str() {
            "alexnet" => Some(Arch::AlexNet),
            "vgg16" => Some(Arch::Vgg16),
            "vgg19" => Some(Arch::Vgg19),
            _ => None,
        }
    }

    fn vgg_depth(&self) -> usize {
        if *self == Arch::Vgg19 {
            19
        } else {
            16
        }
    }

    /// Layer names in forward order; `input` is the (preprocessed) image itself.
    pub fn layers(&self) -> &'static [&'static str] {
        match self {
            Arch::AlexNet => alexnet::LAYERS,
            _ => vgg::layers(self.vgg_depth()),
        }
    }

    /// Resolve a layer name (or alias: the seed's `relu6`/`relu7` are `fc6`/`fc7`, whose
    /// outputs include the ReLU) to its index in `layers()`.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        let name = match name {
            "relu6" => "fc6",
            "relu7" => "fc7",
            n => n,
        };
        self.layers().iter().position(|l| *l == name)
    }

    pub fn params(&self) -> Vec<ParamSpec> {
        match self {
            Arch::AlexNet => alexnet::params(),
            _ => vgg::params(self.vgg_depth()),
        }
    }

    /// Square input side in pixels.
    pub fn input_size(&self) -> usize {
        match self {
            Arch::AlexNet => alexnet::INPUT_SIZE,
            _ => vgg::INPUT_SIZE,
        }
    }

    /// The last feature layer (the one before the ImageNet classifier): fc7.
    pub fn feature_end(&self) -> usize {
        self.layers().len() - 2
    }

    /// Output shape of a layer for one image, `[c, h, w]` or `[d]`.
    pub fn output_shape(&self, layer: usize) -> Vec<usize> {
        match self {
            Arch::AlexNet => alexnet::output_shape(layer),
            _ => vgg::output_shape(self.vgg_depth(), layer),
        }
    }

    /// Another name a `.safetensors` file may use for a runner tensor name (torchvision's VGG).
    pub fn alt_name(&self, runner: &str) -> Option<String> {
        match self {
            Arch::AlexNet => None,
            _ => vgg::torchvision_name(self.vgg_depth(), runner),
        }
    }

    /// Where the seed got the standard weights, for hints in errors.
    pub fn weights_hint(&self) -> &'static str {
        match self {
            Arch::AlexNet => "bvlc-alexnet.npy (Caffe's bvlc_alexnet converted by caffe-tensorflow; the seed downloads it from Udacity's CarND-Alexnet-Feature-Extraction lab); put it in weights/",
            Arch::Vgg16 => "vgg16.npy from machrisaa/tensorflow-vgg (the seed's flowers notebook); put it in weights/",
            Arch::Vgg19 => "vgg19.npy from machrisaa/tensorflow-vgg; put it in weights/",
        }
    }
}

/// A backbone with its weights on a device.
pub enum Network {
    AlexNet(alexnet::AlexNet),
    Vgg(Arch, vgg::Vgg),
}

impl Network {
    pub fn new(arch: Arch, weights: &WeightSet, device: &Device) -> Result<Network> {
        match arch {
            Arch::AlexNet => Ok(Network::AlexNet(alexnet::AlexNet::new(weights, device)?)),
            a => Ok(Network::Vgg(
                a,
                vgg::Vgg::new(a.vgg_depth(), weights, device)?,
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
