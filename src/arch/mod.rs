//! The description of each architecture runner knows: layer names in forward order (the
//! seed's), output shapes, parameter shapes, input size and where its weights come from. Both
//! `weights` (to check and convert files) and `backbone` (to run them) read it; it imports
//! nothing of either, so reading a weights file never needs the network that runs it.

pub mod alexnet;
pub mod vgg;

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

    pub fn vgg_depth(&self) -> usize {
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

    /// Output shape of a layer for one image at the standard input size, `[c, h, w]` or `[d]`.
    pub fn output_shape(&self, layer: usize) -> Vec<usize> {
        self.output_shape_at(layer, self.input_size())
    }

    /// Output shape of a layer for one image of `input x input` pixels. Convolutions and pooling
    /// take any size; the fc layers need the standard one (see `first_fc`).
    pub fn output_shape_at(&self, layer: usize, input: usize) -> Vec<usize> {
        match self {
            Arch::AlexNet => alexnet::output_shape_at(layer, input),
            _ => vgg::output_shape_at(self.vgg_depth(), layer, input),
        }
    }

    /// Index of fc6, the first layer that needs the standard input size.
    pub fn first_fc(&self) -> usize {
        self.layers().len() - 3
    }

    /// The smallest input side whose `layer` output is at least one pixel (`None` for fc layers,
    /// which need the standard size).
    pub fn min_input_for(&self, layer: usize) -> Option<usize> {
        if layer >= self.first_fc() {
            return None;
        }
        (1..=self.input_size()).find(|&s| {
            self.output_shape_at(layer, s)
                .iter()
                .skip(1)
                .all(|&d| d >= 1)
        })
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
