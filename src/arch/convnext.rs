//! ConvNeXt-Tiny as torchvision defines it (`torchvision.models.convnext_tiny`): a 4x4/4 stem
//! convolution (with bias) + LayerNorm over the channels, four stages of CNBlocks (3, 3, 9, 3
//! blocks of widths 96, 192, 384, 768) with a LayerNorm + 2x2/2 convolution between stages, global
//! average pooling, a LayerNorm and a 1000-way fc.
//!
//! A CNBlock: a 7x7 depthwise convolution (padding 3, with bias), LayerNorm over the channels at
//! each pixel (eps 1e-6), a 4x expansion fc with exact (erf) GELU, a projection fc back, times a
//! learned per-channel layer scale, added to the block's input.
//!
//! Cut points follow torchvision's modules: `features.0` (stem), `features.1`, `.3`, `.5`, `.7`
//! (the stages), `features.2`, `.4`, `.6` (the downsampling layers), `pre_logits` (the pooled
//! 768-vector after `classifier.0`, the final LayerNorm), `logits` (`classifier.2`).

use super::{ArchDesc, FlattenOrder, NameMap, ParamSpec};

pub const INPUT_SIZE: usize = 224;
/// The smallest input side runner accepts (the last stage's map is then 1x1).
pub const MIN_INPUT: usize = 32;
pub const LN_EPS: f64 = 1e-6;

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
    "pre_logits",
    "logits",
];
pub const PRE_LOGITS: usize = 9;
pub const WIDTHS: [usize; 4] = [96, 192, 384, 768];
pub const DEPTHS: [usize; 4] = [3, 3, 9, 3];

/// Cut point index of stage `s` (0-based) in `LAYERS`: that of features.1, .3, .5, .7 (cut point
/// `i` is `features.{i - 1}`; the downsampling layer before stage `s` is cut point
/// `stage_at(s) - 1`).
pub fn stage_at(s: usize) -> usize {
    2 * s + 2
}

/// Output shape of cut point `layer` for one `input x input` image.
pub fn output_shape_at(layer: usize, input: usize) -> Vec<usize> {
    if layer == 0 {
        return vec![3, input, input];
    }
    // stem: 4x4 stride 4, no padding; each downsampling: 2x2 stride 2
    let mut side = input / 4;
    if layer <= 2 {
        return vec![WIDTHS[0], side, side];
    }
    for (s, &w) in WIDTHS.iter().enumerate().skip(1) {
        side /= 2;
        if layer <= stage_at(s) {
            return vec![w, side, side];
        }
    }
    match layer {
        PRE_LOGITS => vec![WIDTHS[3]],
        _ => vec![1000],
    }
}

/// Every parameter, in the order of torchvision's state dict (a block's `layer_scale` comes
/// before its `block.*`).
pub fn params() -> Vec<ParamSpec> {
    let conv = |name: &str, at: usize, dims| ParamSpec::conv(name, at, dims, true);
    let mut out = vec![
        conv("features.0.0", 1, (4, 3, WIDTHS[0], 1)),
        ParamSpec::layer_norm("features.0.1", 1, WIDTHS[0]),
    ];
    for (s, (&d, &n)) in WIDTHS.iter().zip(&DEPTHS).enumerate() {
        if s > 0 {
            // cut point `at` is features.{at - 1}
            let at = stage_at(s) - 1;
            let f = at - 1;
            let cin = WIDTHS[s - 1];
            out.push(ParamSpec::layer_norm(&format!("features.{f}.0"), at, cin));
            out.push(conv(&format!("features.{f}.1"), at, (2, cin, d, 1)));
        }
        let at = stage_at(s);
        for b in 0..n {
            let p = format!("features.{}.{b}", at - 1);
            out.push(ParamSpec::tensor(
                &format!("{p}.layer_scale"),
                at,
                vec![d, 1, 1],
            ));
            out.push(conv(&format!("{p}.block.0"), at, (7, d, d, d)));
            out.push(ParamSpec::layer_norm(&format!("{p}.block.2"), at, d));
            out.push(ParamSpec::fc(&format!("{p}.block.3"), at, d, 4 * d));
            out.push(ParamSpec::fc(&format!("{p}.block.5"), at, 4 * d, d));
        }
    }
    out.push(ParamSpec::layer_norm("classifier.0", PRE_LOGITS, WIDTHS[3]));
    out.push(ParamSpec::fc(
        "classifier.2",
        PRE_LOGITS + 1,
        WIDTHS[3],
        1000,
    ));
    out
}

/// timm's `convnext_tiny` names for runner's (torchvision's): `stem.*`, `stages.S.downsample.*`,
/// `stages.S.blocks.B.{conv_dw, norm, mlp.fc1, mlp.fc2, gamma}`, `head.{norm, fc}`. timm's
/// `gamma` is `[d]` where torchvision's `layer_scale` is `[d, 1, 1]`: the same values.
pub fn timm_name(runner: &str) -> Option<String> {
    let (layer, role) = runner.rsplit_once('.')?;
    let mapped = match layer {
        "features.0.0" => "stem.0".to_string(),
        "features.0.1" => "stem.1".to_string(),
        "classifier.0" => "head.norm".to_string(),
        "classifier.2" => "head.fc".to_string(),
        _ if role == "layer_scale" => {
            let (stage, block) = stage_block(runner)?;
            return Some(format!("stages.{stage}.blocks.{block}.gamma"));
        }
        _ => {
            let (at, rest) = layer.strip_prefix("features.")?.split_once('.')?;
            let at: usize = at.parse().ok()?;
            if at.is_multiple_of(2) {
                // a downsampling layer: features.{2s}.{0,1} -> stages.s.downsample.{0,1}
                format!("stages.{}.downsample.{rest}", at / 2)
            } else {
                let (stage, block) = stage_block(layer)?;
                let part = match rest.split_once(".block.")?.1 {
                    "0" => "conv_dw",
                    "2" => "norm",
                    "3" => "mlp.fc1",
                    "5" => "mlp.fc2",
                    _ => return None,
                };
                format!("stages.{stage}.blocks.{block}.{part}")
            }
        }
    };
    Some(format!("{mapped}.{role}"))
}

/// `features.{2s+1}.{b}...` -> (s, b).
fn stage_block(layer: &str) -> Option<(usize, usize)> {
    let mut it = layer.strip_prefix("features.")?.split('.');
    let at: usize = it.next()?.parse().ok()?;
    let block: usize = it.next()?.parse().ok()?;
    (at % 2 == 1).then_some(((at - 1) / 2, block))
}

pub static CONVNEXT_TINY: ArchDesc = ArchDesc {
    name: "convnext_tiny",
    layers: LAYERS,
    aliases: &[
        ("stem", "features.0"),
        ("avgpool", "pre_logits"),
        ("classifier", "logits"),
        ("fc", "logits"),
    ],
    input_size: INPUT_SIZE,
    min_input: MIN_INPUT,
    first_fixed: LAYERS.len(),
    first_vector: PRE_LOGITS,
    tokens: false,
    feature_end: PRE_LOGITS,
    output_shape_at,
    params,
    preprocess: super::resnet::IMAGENET,
    flatten: FlattenOrder::Nchw,
    name_maps: &[NameMap {
        source: "timm",
        map: timm_name,
    }],
    weights_hint: "a torchvision state dict: torchvision.models.convnext_tiny(weights=\"IMAGENET1K_V1\").state_dict() saved once with torch.save (.pth) or safetensors' save_file (timm's convnext_tiny names are read too); put it in weights/",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_shapes_and_names_follow_torchvision() {
        let n: usize = params()
            .iter()
            .flat_map(|p| p.tensors())
            .map(|(_, s)| s.iter().product::<usize>())
            .sum();
        assert_eq!(n, 28_589_128);
        assert_eq!(output_shape_at(1, 224), vec![96, 56, 56]);
        assert_eq!(output_shape_at(4, 224), vec![192, 28, 28]);
        assert_eq!(output_shape_at(8, 224), vec![768, 7, 7]);
        assert_eq!(output_shape_at(8, 32), vec![768, 1, 1]);
        assert_eq!(output_shape_at(5, 64), vec![384, 4, 4]);
        assert_eq!(output_shape_at(PRE_LOGITS, 64), vec![768]);
        let names: Vec<String> = params().into_iter().map(|p| p.layer).collect();
        for n in [
            "features.1.0.layer_scale",
            "features.2.1",
            "features.5.8.block.5",
            "features.6.0",
            "features.7.2.block.0",
        ] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
        assert!(!names.iter().any(|x| x.starts_with("features.8")));
        let t = |s: &str| timm_name(s);
        assert_eq!(t("features.0.0.weight").as_deref(), Some("stem.0.weight"));
        assert_eq!(
            t("features.2.1.bias").as_deref(),
            Some("stages.1.downsample.1.bias")
        );
        assert_eq!(
            t("features.5.8.block.3.weight").as_deref(),
            Some("stages.2.blocks.8.mlp.fc1.weight")
        );
        assert_eq!(
            t("features.7.2.layer_scale").as_deref(),
            Some("stages.3.blocks.2.gamma")
        );
        assert_eq!(
            t("features.1.0.block.0.bias").as_deref(),
            Some("stages.0.blocks.0.conv_dw.bias")
        );
        assert_eq!(
            t("classifier.0.weight").as_deref(),
            Some("head.norm.weight")
        );
    }
}
