//! The description of each architecture runner knows: its cut points in forward order, their
//! output shapes, its named tensors with shapes, its input size and default preprocessing, the
//! order `runner extract` flattens its maps in, and the names other files give its tensors. Both
//! `weights` (to check and convert files) and `backbone` (to run them) read it; it imports
//! nothing of either, so reading a weights file never needs the network that runs it.
//!
//! Adding an architecture: one file here (its `ArchDesc`), one in `backbone/` (its forward
//! pass), a variant of `Arch` with its line in `Arch::desc` and in `backbone::build` (the only
//! two `match`es over architectures, both exhaustive), and its name in `REGISTRY`.

pub mod alexnet;
pub mod convnext;
pub mod efficientnet;
pub mod resnet;
pub mod vgg;
pub mod vit;

/// The architectures runner knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Arch {
    AlexNet,
    Vgg16,
    Vgg19,
    ResNet18,
    ResNet34,
    ResNet50,
    ResNet101,
    ResNet152,
    EfficientNetB0,
    EfficientNetLite0,
    ConvNextTiny,
    VitB16,
}

/// Every architecture, in the order messages list them; `backbone.arch` names one by
/// `ArchDesc::name`.
pub const REGISTRY: &[Arch] = &[
    Arch::AlexNet,
    Arch::Vgg16,
    Arch::Vgg19,
    Arch::ResNet18,
    Arch::ResNet34,
    Arch::ResNet50,
    Arch::ResNet101,
    Arch::ResNet152,
    Arch::EfficientNetB0,
    Arch::EfficientNetLite0,
    Arch::ConvNextTiny,
    Arch::VitB16,
];

/// What one architecture is, as data.
#[derive(Debug)]
pub struct ArchDesc {
    /// `backbone.arch`'s value.
    pub name: &'static str,
    /// Cut points in forward order; index 0 is `input`, the preprocessed image itself.
    pub layers: &'static [&'static str],
    /// Other names accepted for a cut point (the seed's `relu6` is `fc6`).
    pub aliases: &'static [(&'static str, &'static str)],
    /// Square input side in pixels.
    pub input_size: usize,
    /// The smallest input side accepted (at least what leaves every map a pixel).
    pub min_input: usize,
    /// Index of the first cut point that needs the standard input size (AlexNet's and VGG's
    /// first fc layer; `layers.len()` for a network that takes any size; 1 for a transformer
    /// whose position embeddings fix the size).
    pub first_fixed: usize,
    /// Index of the first cut point whose output is a vector, not a feature map.
    pub first_vector: usize,
    /// Whether the maps are token sequences `[tokens, width]` with a class token first (a
    /// vision transformer's), rather than `[channels, h, w]`: pooling then takes the class token
    /// (`Pool::Class`) or the mean of the other tokens (`Pool::Avg`).
    pub tokens: bool,
    /// The cut point `backbone.output` defaults to (the last feature layer).
    pub feature_end: usize,
    /// Output shape of cut point `layer` for one `input x input` image, `[c, h, w]` or `[d]`.
    pub output_shape_at: fn(layer: usize, input: usize) -> Vec<usize>,
    /// The named parameters, in forward order.
    pub params: fn() -> Vec<ParamSpec>,
    /// What the network expects of raw 0..255 RGB pixels.
    pub preprocess: Preprocess,
    /// How `runner extract` flattens a feature map into a row.
    pub flatten: FlattenOrder,
    /// Other files' names for runner's tensor names (torchvision's, timm's ...).
    pub name_maps: &'static [NameMap],
    /// Where the standard weights come from, for hints in errors.
    pub weights_hint: &'static str,
}

/// The input transform from raw 0..255 RGB pixels: channels reordered (`bgr`), then
/// `(x * scale - mean) / std` per channel (in the reordered channel order). Steps that are the
/// identity are not run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Preprocess {
    pub bgr: bool,
    pub scale: f32,
    pub mean: [f32; 3],
    pub std: [f32; 3],
}

impl Preprocess {
    /// Raw pixels as they are (AlexNet's Caffe weights).
    pub const RAW: Preprocess = Preprocess {
        bgr: false,
        scale: 1.0,
        mean: [0.0; 3],
        std: [1.0; 3],
    };

    pub fn is_identity(&self) -> bool {
        *self == Self::RAW
    }
}

/// The order of a feature map's values in one row of `runner extract`'s output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlattenOrder {
    /// (H, W, C): TensorFlow's, the seed's graphs.
    Nhwc,
    /// (C, H, W): PyTorch's.
    Nchw,
}

/// One family of foreign tensor names: `map` turns a runner name into that family's.
#[derive(Debug)]
pub struct NameMap {
    pub source: &'static str,
    pub map: fn(&str) -> Option<String>,
}

/// Shape of one parameterised layer, in runner's (candle = PyTorch) layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParamKind {
    /// weight `[cout, cin / groups, kh, kw]`, and bias `[cout]` when `bias`.
    Conv {
        kh: usize,
        kw: usize,
        cin: usize,
        cout: usize,
        groups: usize,
        bias: bool,
    },
    /// weight `[cout, cin]`, bias `[cout]`; `flatten_chw` is the feature map flattened into the
    /// input (c, h, w), whose row order differs between TensorFlow (NHWC) and candle (NCHW).
    Fc {
        cin: usize,
        cout: usize,
        flatten_chw: Option<(usize, usize, usize)>,
    },
    /// weight, bias, running_mean, running_var, each `[c]`.
    BatchNorm { c: usize },
    /// weight, bias, each `[d]`.
    LayerNorm { d: usize },
    /// One tensor named by the layer itself (an embedding, a class token).
    Tensor { shape: Vec<usize> },
}

/// One parameterised layer: its name (the prefix of its tensors' names), the cut point whose
/// computation uses it, and its shapes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParamSpec {
    pub layer: String,
    /// Index into `ArchDesc::layers` of the cut point that needs this layer.
    pub at: usize,
    pub kind: ParamKind,
}

impl ParamSpec {
    /// A layer of `kind` used by cut point `at`.
    pub fn new(layer: &str, at: usize, kind: ParamKind) -> ParamSpec {
        ParamSpec {
            layer: layer.to_string(),
            at,
            kind,
        }
    }

    /// A square `k x k` convolution: `(k, cin, cout, groups)`, with or without a bias.
    pub fn conv(
        layer: &str,
        at: usize,
        (k, cin, cout, groups): (usize, usize, usize, usize),
        bias: bool,
    ) -> ParamSpec {
        let kind = ParamKind::Conv {
            kh: k,
            kw: k,
            cin,
            cout,
            groups,
            bias,
        };
        ParamSpec::new(layer, at, kind)
    }

    /// A convolution without bias and the batch norm after it (torchvision's
    /// `Conv2dNormActivation`): `(k, cin, cout, groups)`.
    pub fn conv_bn(
        (conv, bn): (&str, &str),
        at: usize,
        dims: (usize, usize, usize, usize),
    ) -> [ParamSpec; 2] {
        let norm = ParamKind::BatchNorm { c: dims.2 };
        [
            ParamSpec::conv(conv, at, dims, false),
            ParamSpec::new(bn, at, norm),
        ]
    }

    /// An fc layer on a vector (not on a flattened map).
    pub fn fc(layer: &str, at: usize, cin: usize, cout: usize) -> ParamSpec {
        let kind = ParamKind::Fc {
            cin,
            cout,
            flatten_chw: None,
        };
        ParamSpec::new(layer, at, kind)
    }

    /// A LayerNorm over `d` values.
    pub fn layer_norm(layer: &str, at: usize, d: usize) -> ParamSpec {
        ParamSpec::new(layer, at, ParamKind::LayerNorm { d })
    }

    /// One tensor named by the layer itself (an embedding, a token, a layer scale).
    pub fn tensor(layer: &str, at: usize, shape: Vec<usize>) -> ParamSpec {
        ParamSpec::new(layer, at, ParamKind::Tensor { shape })
    }

    /// Every tensor of the layer: full name and shape, in runner's layout.
    pub fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let n = |suffix: &str| format!("{}.{suffix}", self.layer);
        match &self.kind {
            ParamKind::Conv { bias, cout, .. } => {
                let mut v = vec![(n("weight"), self.weight_shape())];
                if *bias {
                    v.push((n("bias"), vec![*cout]));
                }
                v
            }
            ParamKind::Fc { cout, .. } => {
                vec![(n("weight"), self.weight_shape()), (n("bias"), vec![*cout])]
            }
            ParamKind::BatchNorm { c } => ["weight", "bias", "running_mean", "running_var"]
                .iter()
                .map(|s| (n(s), vec![*c]))
                .collect(),
            ParamKind::LayerNorm { d } => vec![(n("weight"), vec![*d]), (n("bias"), vec![*d])],
            ParamKind::Tensor { shape } => vec![(self.layer.clone(), shape.clone())],
        }
    }

    /// `[cout, cin/groups, kh, kw]` or `[cout, cin]`; the first tensor's shape otherwise.
    pub fn weight_shape(&self) -> Vec<usize> {
        match &self.kind {
            ParamKind::Conv {
                kh,
                kw,
                cin,
                cout,
                groups,
                ..
            } => vec![*cout, cin / groups, *kh, *kw],
            ParamKind::Fc { cin, cout, .. } => vec![*cout, *cin],
            ParamKind::BatchNorm { c } => vec![*c],
            ParamKind::LayerNorm { d } => vec![*d],
            ParamKind::Tensor { shape } => shape.clone(),
        }
    }

    /// The weight as the seed's TensorFlow files store it: HWIO for a conv, `[in, out]` for an
    /// fc; the other kinds have one layout, runner's.
    pub fn seed_weight_shape(&self) -> Vec<usize> {
        match &self.kind {
            ParamKind::Conv {
                kh,
                kw,
                cin,
                cout,
                groups,
                ..
            } => vec![*kh, *kw, cin / groups, *cout],
            ParamKind::Fc { cin, cout, .. } => vec![*cin, *cout],
            _ => self.weight_shape(),
        }
    }

    /// Whether the layer is a weight + bias pair (a conv with bias, or an fc), the only kind the
    /// seed's TensorFlow-layout files and ONNX node order carry.
    pub fn is_weight_bias(&self) -> bool {
        matches!(
            self.kind,
            ParamKind::Conv { bias: true, .. } | ParamKind::Fc { .. }
        )
    }

    /// Length of the bias of a conv/fc layer (0 for a conv without one and for other kinds).
    pub fn bias_len(&self) -> usize {
        match &self.kind {
            ParamKind::Conv {
                cout, bias: true, ..
            }
            | ParamKind::Fc { cout, .. } => *cout,
            _ => 0,
        }
    }
}

impl Arch {
    pub const ALL: &'static [Arch] = REGISTRY;

    /// The description of each architecture: one of the two `match`es over `Arch` (the other
    /// is `backbone::build`).
    pub fn desc(self) -> &'static ArchDesc {
        match self {
            Arch::AlexNet => &alexnet::DESC,
            Arch::Vgg16 => &vgg::VGG16,
            Arch::Vgg19 => &vgg::VGG19,
            Arch::ResNet18 => &resnet::RESNET18,
            Arch::ResNet34 => &resnet::RESNET34,
            Arch::ResNet50 => &resnet::RESNET50,
            Arch::ResNet101 => &resnet::RESNET101,
            Arch::ResNet152 => &resnet::RESNET152,
            Arch::EfficientNetB0 => &efficientnet::EFFICIENTNET_B0,
            Arch::EfficientNetLite0 => &efficientnet::EFFICIENTNET_LITE0,
            Arch::ConvNextTiny => &convnext::CONVNEXT_TINY,
            Arch::VitB16 => &vit::VIT_B_16,
        }
    }

    pub fn name(&self) -> &'static str {
        self.desc().name
    }

    pub fn parse(s: &str) -> Option<Arch> {
        REGISTRY
            .iter()
            .copied()
            .find(|a| a.name().eq_ignore_ascii_case(s))
    }

    /// Layer names in forward order; `input` is the (preprocessed) image itself.
    pub fn layers(&self) -> &'static [&'static str] {
        self.desc().layers
    }

    /// Resolve a layer name (or an alias: the seed's `relu6`/`relu7` are `fc6`/`fc7`, whose
    /// outputs include the ReLU) to its index in `layers()`.
    pub fn layer_index(&self, name: &str) -> Option<usize> {
        let d = self.desc();
        let name = d
            .aliases
            .iter()
            .find(|(alias, _)| *alias == name)
            .map_or(name, |(_, real)| real);
        d.layers.iter().position(|l| *l == name)
    }

    pub fn params(&self) -> Vec<ParamSpec> {
        (self.desc().params)()
    }

    /// Square input side in pixels.
    pub fn input_size(&self) -> usize {
        self.desc().input_size
    }

    /// The default `backbone.output`: the last feature layer (fc7 for AlexNet/VGG).
    pub fn feature_end(&self) -> usize {
        self.desc().feature_end
    }

    /// Output shape of a layer for one image at the standard input size, `[c, h, w]` or `[d]`.
    pub fn output_shape(&self, layer: usize) -> Vec<usize> {
        self.output_shape_at(layer, self.input_size())
    }

    /// Output shape of a layer for one image of `input x input` pixels. Convolutions and pooling
    /// take any size; the layers from `first_fc` on need the standard one.
    pub fn output_shape_at(&self, layer: usize, input: usize) -> Vec<usize> {
        (self.desc().output_shape_at)(layer, input)
    }

    /// Index of the first layer that needs the standard input size.
    pub fn first_fc(&self) -> usize {
        self.desc().first_fixed
    }

    /// The length of cut point `layer`'s output once pooled (`shape` its output shape): its
    /// channels, or a token's width.
    pub fn pooled_len(&self, shape: &[usize]) -> usize {
        let i = usize::from(self.desc().tokens);
        shape.get(i).copied().unwrap_or(0)
    }

    /// Whether the architecture's maps are token sequences (`ArchDesc::tokens`).
    pub fn tokens(&self) -> bool {
        self.desc().tokens
    }

    /// Whether cut point `layer`'s output is a feature map (which `backbone.pool` can pool).
    pub fn is_map(&self, layer: usize) -> bool {
        layer < self.desc().first_vector
    }

    /// The smallest input side whose `layer` output (or, for a vector, the last map's) is at
    /// least one pixel, and at least the architecture's minimum; `None` for layers that need
    /// the standard size.
    pub fn min_input_for(&self, layer: usize) -> Option<usize> {
        if layer >= self.first_fc() {
            return None;
        }
        let map = layer.min(self.desc().first_vector.saturating_sub(1));
        (self.desc().min_input.max(1)..=self.input_size())
            .find(|&s| self.output_shape_at(map, s).iter().skip(1).all(|&d| d >= 1))
    }

    /// The names other files may use for a runner tensor name, with the family of each.
    pub fn alt_names(&self, runner: &str) -> Vec<(&'static str, String)> {
        self.desc()
            .name_maps
            .iter()
            .filter_map(|m| (m.map)(runner).map(|n| (m.source, n)))
            .collect()
    }

    /// The input transform of raw 0..255 RGB pixels.
    pub fn preprocess(&self) -> Preprocess {
        self.desc().preprocess
    }

    /// Where the standard weights come from, for hints in errors.
    pub fn weights_hint(&self) -> &'static str {
        self.desc().weights_hint
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registry_names_parse_back_and_describe_themselves() {
        for &a in REGISTRY {
            assert_eq!(Arch::parse(a.name()), Some(a));
            assert_eq!(Arch::parse(&a.name().to_uppercase()), Some(a));
            let d = a.desc();
            assert_eq!(d.layers[0], "input");
            assert!(d.feature_end < d.layers.len() && d.first_vector <= d.feature_end);
            // (a transformer's maps need the standard size too: first_fixed may come first)
            assert!(d.first_fixed >= 1 && d.first_fixed <= d.layers.len());
            assert_eq!(a.output_shape(0), vec![3, d.input_size, d.input_size]);
            for p in a.params() {
                assert!(
                    p.at > 0 && p.at < d.layers.len(),
                    "{}: {}",
                    a.name(),
                    p.layer
                );
                assert!(!p.tensors().is_empty());
            }
        }
        assert_eq!(Arch::parse("resnet9"), None);
        assert_eq!(
            Arch::AlexNet.layer_index("relu7"),
            Arch::AlexNet.layer_index("fc7")
        );
    }

    #[test]
    fn tensors_of_each_kind() {
        let bn = ParamSpec::new("bn1", 1, ParamKind::BatchNorm { c: 4 });
        let names: Vec<String> = bn.tensors().into_iter().map(|(n, _)| n).collect();
        assert_eq!(
            names,
            [
                "bn1.weight",
                "bn1.bias",
                "bn1.running_mean",
                "bn1.running_var"
            ]
        );
        let conv = ParamKind::Conv {
            kh: 3,
            kw: 3,
            cin: 8,
            cout: 4,
            groups: 2,
            bias: false,
        };
        let c = ParamSpec::new("conv1", 1, conv);
        assert_eq!(c.tensors(), vec![("conv1.weight".into(), vec![4, 4, 3, 3])]);
        assert_eq!(c.bias_len(), 0);
        assert!(!c.is_weight_bias());
        let t = ParamSpec::new(
            "class_token",
            1,
            ParamKind::Tensor {
                shape: vec![1, 1, 8],
            },
        );
        assert_eq!(t.tensors(), vec![("class_token".into(), vec![1, 1, 8])]);
        assert_eq!(t.seed_weight_shape(), vec![1, 1, 8]);
    }
}
