//! ResNet-18/34/50/101/152 as torchvision defines them (`torchvision.models.resnet`): a 7x7/2
//! convolution (no bias) + batch norm + ReLU + 3x3/2 max pooling (padding 1), four stages of
//! BasicBlocks (18, 34) or Bottlenecks (50, 101, 152; the stride on the 3x3 convolution, the
//! "v1.5" variant), global average pooling and `fc`. Batch norm eps 1e-5, zero padding.
//! Tensor names are torchvision's (`layer1.0.conv1.weight`, `layer1.0.downsample.1.running_var`,
//! `fc.bias` ...), which timm's ResNets share.

use super::{ArchDesc, FlattenOrder, ParamSpec, Preprocess};

pub const INPUT_SIZE: usize = 224;
/// The smallest input side runner accepts (layer4 is then 1x1).
pub const MIN_INPUT: usize = 32;
pub const BN_EPS: f64 = 1e-5;

/// Cut points, named as torchvision's modules: `stem` is the output of `maxpool`,
/// `pre_logits` of `flatten` (the pooled vector), `logits` of `fc`.
pub const LAYERS: &[&str] = &[
    "input",
    "stem",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
    "pre_logits",
    "logits",
];
pub const PRE_LOGITS: usize = 6;

/// torchvision's input transform: RGB / 255, ImageNet mean and std.
pub const IMAGENET: Preprocess = Preprocess {
    bgr: false,
    scale: 1.0 / 255.0,
    mean: [0.485, 0.456, 0.406],
    std: [0.229, 0.224, 0.225],
};

/// BasicBlock (two 3x3 convolutions) or Bottleneck (1x1, 3x3, 1x1 with 4x expansion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Block {
    Basic,
    Bottleneck,
}

impl Block {
    pub fn expansion(self) -> usize {
        match self {
            Block::Basic => 1,
            Block::Bottleneck => 4,
        }
    }
}

/// The block kind and blocks per stage of ResNet-`depth`.
pub fn config(depth: usize) -> (Block, [usize; 4]) {
    match depth {
        18 => (Block::Basic, [2, 2, 2, 2]),
        34 => (Block::Basic, [3, 4, 6, 3]),
        101 => (Block::Bottleneck, [3, 4, 23, 3]),
        152 => (Block::Bottleneck, [3, 8, 36, 3]),
        _ => (Block::Bottleneck, [3, 4, 6, 3]),
    }
}

/// Base widths of the four stages.
pub const WIDTHS: [usize; 4] = [64, 128, 256, 512];

macro_rules! resnet_desc {
    ($name:ident, $depth:expr, $label:expr) => {
        pub static $name: ArchDesc = ArchDesc {
            name: $label,
            layers: LAYERS,
            aliases: &[("maxpool", "stem"), ("flatten", "pre_logits"), ("fc", "logits")],
            input_size: INPUT_SIZE,
            min_input: MIN_INPUT,
            first_fixed: LAYERS.len(),
            first_vector: PRE_LOGITS,
            tokens: false,
            feature_end: PRE_LOGITS,
            output_shape_at: |layer, input| output_shape_at($depth, layer, input),
            params: || params($depth),
            preprocess: IMAGENET,
            flatten: FlattenOrder::Nchw,
            name_maps: &[],
            weights_hint: concat!(
                "a torchvision state dict: torchvision.models.",
                $label,
                "(weights=\"IMAGENET1K_V1\").state_dict() saved once with torch.save (.pth) or safetensors' save_file (timm's ",
                $label,
                " files have the same names); put it in weights/"
            ),
        };
    };
}

resnet_desc!(RESNET18, 18, "resnet18");
resnet_desc!(RESNET34, 34, "resnet34");
resnet_desc!(RESNET50, 50, "resnet50");
resnet_desc!(RESNET101, 101, "resnet101");
resnet_desc!(RESNET152, 152, "resnet152");

/// One side through a k x k convolution or pooling with stride s and padding p.
pub fn out_side(side: usize, k: usize, s: usize, p: usize) -> usize {
    (side + 2 * p).saturating_sub(k) / s + 1
}

/// Output shape of cut point `layer` for one `input x input` image.
pub fn output_shape_at(depth: usize, layer: usize, input: usize) -> Vec<usize> {
    let (block, _) = config(depth);
    let e = block.expansion();
    let conv1 = out_side(input, 7, 2, 3);
    let mut side = out_side(conv1, 3, 2, 1);
    if layer == 0 {
        return vec![3, input, input];
    }
    if layer == 1 {
        return vec![64, side, side];
    }
    for (stage, w) in WIDTHS.iter().enumerate() {
        if stage > 0 {
            side = out_side(side, 3, 2, 1);
        }
        if layer == stage + 2 {
            return vec![w * e, side, side];
        }
    }
    if layer == PRE_LOGITS {
        vec![512 * e]
    } else {
        vec![1000]
    }
}

/// A convolution without bias and the batch norm after it, as torchvision names them.
fn conv_bn(
    out: &mut Vec<ParamSpec>,
    at: usize,
    (conv, bn): (String, String),
    (k, cin, cout): (usize, usize, usize),
) {
    out.extend(ParamSpec::conv_bn((&conv, &bn), at, (k, cin, cout, 1)));
}

/// Every parameter of ResNet-`depth`, in forward order.
pub fn params(depth: usize) -> Vec<ParamSpec> {
    let (block, counts) = config(depth);
    let e = block.expansion();
    let mut out = Vec::new();
    conv_bn(&mut out, 1, ("conv1".into(), "bn1".into()), (7, 3, 64));
    let mut cin = 64;
    for (stage, (&n, &w)) in counts.iter().zip(&WIDTHS).enumerate() {
        let at = stage + 2;
        for b in 0..n {
            let p = format!("layer{}.{b}", stage + 1);
            let name = |s: &str| format!("{p}.{s}");
            let stride = if stage > 0 && b == 0 { 2 } else { 1 };
            match block {
                Block::Basic => {
                    conv_bn(&mut out, at, (name("conv1"), name("bn1")), (3, cin, w));
                    conv_bn(&mut out, at, (name("conv2"), name("bn2")), (3, w, w));
                }
                Block::Bottleneck => {
                    conv_bn(&mut out, at, (name("conv1"), name("bn1")), (1, cin, w));
                    conv_bn(&mut out, at, (name("conv2"), name("bn2")), (3, w, w));
                    conv_bn(&mut out, at, (name("conv3"), name("bn3")), (1, w, w * e));
                }
            }
            if stride != 1 || cin != w * e {
                let ds = (name("downsample.0"), name("downsample.1"));
                conv_bn(&mut out, at, ds, (1, cin, w * e));
            }
            cin = w * e;
        }
    }
    out.push(ParamSpec::fc("fc", PRE_LOGITS + 1, cin, 1000));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arch::ParamKind;

    fn count(depth: usize) -> usize {
        params(depth)
            .iter()
            .flat_map(|p| p.tensors())
            .map(|(_, s)| s.iter().product::<usize>())
            .filter(|&n| n > 0)
            .sum()
    }

    #[test]
    fn parameter_counts_are_torchvisions() {
        // torchvision's documented parameter counts (running statistics are buffers, not
        // parameters: 2 x the batch-norm channels are subtracted)
        let bn = |depth: usize| -> usize {
            params(depth)
                .iter()
                .filter_map(|p| match p.kind {
                    ParamKind::BatchNorm { c } => Some(2 * c),
                    _ => None,
                })
                .sum()
        };
        assert_eq!(count(18) - bn(18), 11_689_512);
        assert_eq!(count(34) - bn(34), 21_797_672);
        assert_eq!(count(50) - bn(50), 25_557_032);
        assert_eq!(count(101) - bn(101), 44_549_160);
        assert_eq!(count(152) - bn(152), 60_192_808);
    }

    #[test]
    fn shapes_follow_torchvision() {
        assert_eq!(output_shape_at(50, 1, 224), vec![64, 56, 56]);
        assert_eq!(output_shape_at(50, 2, 224), vec![256, 56, 56]);
        assert_eq!(output_shape_at(50, 5, 224), vec![2048, 7, 7]);
        assert_eq!(output_shape_at(18, 5, 224), vec![512, 7, 7]);
        assert_eq!(output_shape_at(18, PRE_LOGITS, 64), vec![512]);
        assert_eq!(output_shape_at(50, 5, 32), vec![2048, 1, 1]);
        assert_eq!(output_shape_at(50, 4, 64), vec![1024, 4, 4]);
        let names: Vec<String> = params(50).into_iter().map(|p| p.layer).collect();
        assert!(names.contains(&"layer1.0.downsample.0".to_string()));
        assert!(names.contains(&"layer4.2.bn3".to_string()));
        assert!(!names.contains(&"layer1.0.downsample.0".replace("layer1", "layer2.1")));
    }
}
