//! AlexNet as the seed's `alexnet.py` describes it: 227x227 input, layer names, output and
//! parameter shapes (Caffe's bvlc_alexnet: grouped conv2, conv4, conv5), LRN settings.

use super::{ArchDesc, FlattenOrder, ParamKind, ParamSpec, Preprocess};

pub const INPUT_SIZE: usize = 227;

pub const LAYERS: &[&str] = &[
    "input", "conv1", "pool1", "conv2", "pool2", "conv3", "conv4", "conv5", "pool5", "fc6", "fc7",
    "fc8",
];

/// LRN settings of the seed: depth_radius 2, alpha 2e-5, beta 0.75, bias 1.0.
pub const LRN_RADIUS: usize = 2;
pub const LRN_ALPHA: f64 = 2e-5;
pub const LRN_BETA: f64 = 0.75;
pub const LRN_BIAS: f64 = 1.0;

/// AlexNet as runner's registry describes it.
pub static DESC: ArchDesc = ArchDesc {
    name: "alexnet",
    layers: LAYERS,
    aliases: &[("relu6", "fc6"), ("relu7", "fc7")],
    input_size: INPUT_SIZE,
    min_input: 1,
    first_fixed: 9,
    first_vector: 9,
    tokens: false,
    feature_end: 10,
    output_shape_at,
    params,
    preprocess: Preprocess::RAW,
    flatten: FlattenOrder::Nhwc,
    name_maps: &[],
    weights_hint: "bvlc-alexnet.npy (Caffe's bvlc_alexnet converted by caffe-tensorflow; the seed downloads it from Udacity's CarND-Alexnet-Feature-Extraction lab); put it in weights/",
};

/// Index of a layer name in `LAYERS` (the names below are all there).
fn at(layer: &str) -> usize {
    LAYERS.iter().position(|l| *l == layer).unwrap_or(0)
}

pub fn params() -> Vec<ParamSpec> {
    let conv = |layer, k, cin, cout, groups| {
        let kind = ParamKind::Conv {
            kh: k,
            kw: k,
            cin,
            cout,
            groups,
            bias: true,
        };
        ParamSpec::new(layer, at(layer), kind)
    };
    let fc = |layer, cin, cout, flatten_chw| {
        let kind = ParamKind::Fc {
            cin,
            cout,
            flatten_chw,
        };
        ParamSpec::new(layer, at(layer), kind)
    };
    vec![
        conv("conv1", 11, 3, 96, 1),
        conv("conv2", 5, 96, 256, 2),
        conv("conv3", 3, 256, 384, 1),
        conv("conv4", 3, 384, 384, 2),
        conv("conv5", 3, 384, 256, 2),
        fc("fc6", 9216, 4096, Some((256, 6, 6))),
        fc("fc7", 4096, 4096, None),
        fc("fc8", 4096, 1000, None),
    ]
}

/// Output shape of a layer for one image of `input x input` pixels: conv1 11x11/4 SAME gives
/// `ceil(input / 4)`, each 3/2 VALID pooling `(side - 3) / 2 + 1`, the other convolutions keep
/// the side. At 227: 57, 28, 13, 6. Fc layers (which need pool5 at 6x6) are 4096 and 1000 wide.
pub fn output_shape_at(layer: usize, input: usize) -> Vec<usize> {
    let pool = |s: usize| if s >= 3 { (s - 3) / 2 + 1 } else { 0 };
    let c1 = input.div_ceil(4);
    let (p1, p2) = (pool(c1), pool(pool(c1)));
    match LAYERS.get(layer).copied() {
        Some("input") => vec![3, input, input],
        Some("conv1") => vec![96, c1, c1],
        Some("pool1") => vec![96, p1, p1],
        Some("conv2") => vec![256, p1, p1],
        Some("pool2") => vec![256, p2, p2],
        Some("conv3") => vec![384, p2, p2],
        Some("conv4") => vec![384, p2, p2],
        Some("conv5") => vec![256, p2, p2],
        Some("pool5") => vec![256, pool(p2), pool(p2)],
        Some("fc6") | Some("fc7") => vec![4096],
        _ => vec![1000],
    }
}

/// Output shape of a layer at the standard 227x227 input.
pub fn output_shape(layer: usize) -> Vec<usize> {
    output_shape_at(layer, INPUT_SIZE)
}
