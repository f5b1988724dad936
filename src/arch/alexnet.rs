//! AlexNet as the seed's `alexnet.py` describes it: 227x227 input, layer names, output and
//! parameter shapes (Caffe's bvlc_alexnet: grouped conv2, conv4, conv5), LRN settings.

use super::{ParamKind, ParamSpec};

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

pub fn params() -> Vec<ParamSpec> {
    let conv = |layer, k, cin, cout, groups| ParamSpec {
        layer,
        kind: ParamKind::Conv {
            kh: k,
            kw: k,
            cin,
            cout,
            groups,
        },
    };
    vec![
        conv("conv1", 11, 3, 96, 1),
        conv("conv2", 5, 96, 256, 2),
        conv("conv3", 3, 256, 384, 1),
        conv("conv4", 3, 384, 384, 2),
        conv("conv5", 3, 384, 256, 2),
        ParamSpec {
            layer: "fc6",
            kind: ParamKind::Fc {
                cin: 9216,
                cout: 4096,
                flatten_chw: Some((256, 6, 6)),
            },
        },
        ParamSpec {
            layer: "fc7",
            kind: ParamKind::Fc {
                cin: 4096,
                cout: 4096,
                flatten_chw: None,
            },
        },
        ParamSpec {
            layer: "fc8",
            kind: ParamKind::Fc {
                cin: 4096,
                cout: 1000,
                flatten_chw: None,
            },
        },
    ]
}

pub fn output_shape(layer: usize) -> Vec<usize> {
    match LAYERS.get(layer).copied() {
        Some("input") => vec![3, 227, 227],
        Some("conv1") => vec![96, 57, 57],
        Some("pool1") => vec![96, 28, 28],
        Some("conv2") => vec![256, 28, 28],
        Some("pool2") => vec![256, 13, 13],
        Some("conv3") => vec![384, 13, 13],
        Some("conv4") => vec![384, 13, 13],
        Some("conv5") => vec![256, 13, 13],
        Some("pool5") => vec![256, 6, 6],
        Some("fc6") | Some("fc7") => vec![4096],
        _ => vec![1000],
    }
}
