//! ViT-B/16 as torchvision defines it (`torchvision.models.vit_b_16`): 16x16 patches embedded by
//! a 16x16/16 convolution (`conv_proj`, with bias), a learned class token in front, learned
//! position embeddings added, 12 pre-norm encoder blocks (LayerNorm eps 1e-6, 12-head
//! self-attention with one packed q/k/v projection, LayerNorm, an MLP 768 -> 3072 -> 768 with
//! exact GELU, each added to its input), a final LayerNorm, and `heads.head` on the class token.
//!
//! Cut points: `block0` .. `block11`, each the token sequence `[197, 768]` after that block
//! (`block0` includes the embedding); a head reading one takes the class token, or with
//! `pool = "avg"` the mean of the 196 patch tokens. `pre_logits` is the class token after the
//! final LayerNorm (768), `logits` `heads.head`'s output. The input is 224x224: the position
//! embeddings are learned for a 14x14 grid, and runner does not interpolate them.
//!
//! torchvision's tensor names; timm's `vit_base_patch16_224` names are mapped (their q/k/v
//! packing is torchvision's). timm's weights expect `mean = std = [0.5, 0.5, 0.5]`.

use super::{ArchDesc, FlattenOrder, NameMap, ParamSpec};

pub const INPUT_SIZE: usize = 224;
pub const PATCH: usize = 16;
pub const WIDTH: usize = 768;
pub const HEADS: usize = 12;
pub const MLP: usize = 3072;
pub const DEPTH: usize = 12;
pub const LN_EPS: f64 = 1e-6;

pub const LAYERS: &[&str] = &[
    "input",
    "block0",
    "block1",
    "block2",
    "block3",
    "block4",
    "block5",
    "block6",
    "block7",
    "block8",
    "block9",
    "block10",
    "block11",
    "pre_logits",
    "logits",
];
pub const PRE_LOGITS: usize = 13;

/// Tokens for an `input x input` image: the class token and one per patch.
pub fn tokens(input: usize) -> usize {
    1 + (input / PATCH) * (input / PATCH)
}

/// Output shape of cut point `layer` for one `input x input` image.
pub fn output_shape_at(layer: usize, input: usize) -> Vec<usize> {
    match layer {
        0 => vec![3, input, input],
        PRE_LOGITS => vec![WIDTH],
        l if l < PRE_LOGITS => vec![tokens(input), WIDTH],
        _ => vec![1000],
    }
}

/// The name prefix of encoder block `i`.
pub fn block(i: usize) -> String {
    format!("encoder.layers.encoder_layer_{i}")
}

/// Every parameter, in the order of torchvision's state dict.
pub fn params() -> Vec<ParamSpec> {
    let patch = (PATCH, 3, WIDTH, 1);
    let pos = vec![1, tokens(INPUT_SIZE), WIDTH];
    let mut out = vec![
        ParamSpec::tensor("class_token", 1, vec![1, 1, WIDTH]),
        ParamSpec::conv("conv_proj", 1, patch, true),
        ParamSpec::tensor("encoder.pos_embedding", 1, pos),
    ];
    for i in 0..DEPTH {
        let (p, at) = (block(i), i + 1);
        let attn = format!("{p}.self_attention");
        out.extend([
            ParamSpec::layer_norm(&format!("{p}.ln_1"), at, WIDTH),
            // the packed q/k/v projection: two tensors not named `.weight`/`.bias`
            ParamSpec::tensor(
                &format!("{attn}.in_proj_weight"),
                at,
                vec![3 * WIDTH, WIDTH],
            ),
            ParamSpec::tensor(&format!("{attn}.in_proj_bias"), at, vec![3 * WIDTH]),
            ParamSpec::fc(&format!("{attn}.out_proj"), at, WIDTH, WIDTH),
            ParamSpec::layer_norm(&format!("{p}.ln_2"), at, WIDTH),
            ParamSpec::fc(&format!("{p}.mlp.0"), at, WIDTH, MLP),
            ParamSpec::fc(&format!("{p}.mlp.3"), at, MLP, WIDTH),
        ]);
    }
    out.push(ParamSpec::layer_norm("encoder.ln", PRE_LOGITS, WIDTH));
    out.push(ParamSpec::fc("heads.head", PRE_LOGITS + 1, WIDTH, 1000));
    out
}

/// timm's `vit_base_patch16_224` name for a runner (torchvision) tensor name.
pub fn timm_name(runner: &str) -> Option<String> {
    let fixed = match runner {
        "class_token" => Some("cls_token"),
        "encoder.pos_embedding" => Some("pos_embed"),
        "conv_proj.weight" => Some("patch_embed.proj.weight"),
        "conv_proj.bias" => Some("patch_embed.proj.bias"),
        "encoder.ln.weight" => Some("norm.weight"),
        "encoder.ln.bias" => Some("norm.bias"),
        "heads.head.weight" => Some("head.weight"),
        "heads.head.bias" => Some("head.bias"),
        _ => None,
    };
    if let Some(f) = fixed {
        return Some(f.to_string());
    }
    let rest = runner.strip_prefix("encoder.layers.encoder_layer_")?;
    let (i, rest) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    let part = match rest {
        "ln_1.weight" => "norm1.weight",
        "ln_1.bias" => "norm1.bias",
        "self_attention.in_proj_weight" => "attn.qkv.weight",
        "self_attention.in_proj_bias" => "attn.qkv.bias",
        "self_attention.out_proj.weight" => "attn.proj.weight",
        "self_attention.out_proj.bias" => "attn.proj.bias",
        "ln_2.weight" => "norm2.weight",
        "ln_2.bias" => "norm2.bias",
        "mlp.0.weight" => "mlp.fc1.weight",
        "mlp.0.bias" => "mlp.fc1.bias",
        "mlp.3.weight" => "mlp.fc2.weight",
        "mlp.3.bias" => "mlp.fc2.bias",
        _ => return None,
    };
    Some(format!("blocks.{i}.{part}"))
}

pub static VIT_B_16: ArchDesc = ArchDesc {
    name: "vit_b_16",
    layers: LAYERS,
    aliases: &[("encoder.ln", "pre_logits"), ("heads", "logits"), ("head", "logits")],
    input_size: INPUT_SIZE,
    min_input: INPUT_SIZE,
    // the position embeddings fix the input size for every cut point
    first_fixed: 1,
    first_vector: PRE_LOGITS,
    tokens: true,
    feature_end: PRE_LOGITS,
    output_shape_at,
    params,
    preprocess: super::resnet::IMAGENET,
    flatten: FlattenOrder::Nchw,
    name_maps: &[NameMap {
        source: "timm",
        map: timm_name,
    }],
    weights_hint: "a torchvision state dict: torchvision.models.vit_b_16(weights=\"IMAGENET1K_V1\").state_dict() saved once with torch.save (.pth) or safetensors' save_file (timm's vit_base_patch16_224 names are read too; its weights want mean = std = [0.5, 0.5, 0.5]); put it in weights/",
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
        assert_eq!(n, 86_567_656);
        assert_eq!(output_shape_at(1, 224), vec![197, 768]);
        assert_eq!(output_shape_at(12, 224), vec![197, 768]);
        assert_eq!(output_shape_at(PRE_LOGITS, 224), vec![768]);
        assert_eq!(
            timm_name("encoder.layers.encoder_layer_11.self_attention.in_proj_weight").as_deref(),
            Some("blocks.11.attn.qkv.weight")
        );
        assert_eq!(
            timm_name("encoder.layers.encoder_layer_0.mlp.3.bias").as_deref(),
            Some("blocks.0.mlp.fc2.bias")
        );
        assert_eq!(timm_name("class_token").as_deref(), Some("cls_token"));
    }
}
