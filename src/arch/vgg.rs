//! VGG16 and VGG19 as tensorflow-vgg's `vgg16.py` / `vgg19.py` describe them: 224x224 input,
//! BGR mean, layer names, output and parameter shapes, and torchvision's names for the same
//! tensors.

use super::{ArchDesc, FlattenOrder, NameMap, ParamKind, ParamSpec, Preprocess};

pub const INPUT_SIZE: usize = 224;
pub const BGR_MEAN: [f32; 3] = [103.939, 116.779, 123.68];

/// tensorflow-vgg's input transform: BGR, minus the BGR mean (runner feeds raw 0..255 pixels).
const PREPROCESS: Preprocess = Preprocess {
    bgr: true,
    scale: 1.0,
    mean: BGR_MEAN,
    std: [1.0; 3],
};

macro_rules! vgg_desc {
    ($name:ident, $depth:expr, $label:expr, $layers:expr, $first_fc:expr, $hint:expr) => {
        /// VGG as runner's registry describes it.
        pub static $name: ArchDesc = ArchDesc {
            name: $label,
            layers: $layers,
            aliases: &[("relu6", "fc6"), ("relu7", "fc7")],
            input_size: INPUT_SIZE,
            min_input: 1,
            first_fixed: $first_fc,
            first_vector: $first_fc,
            tokens: false,
            feature_end: $first_fc + 1,
            output_shape_at: |layer, input| output_shape_at($depth, layer, input),
            params: || params($depth),
            preprocess: PREPROCESS,
            flatten: FlattenOrder::Nhwc,
            name_maps: &[NameMap {
                source: "torchvision",
                map: |n| torchvision_name($depth, n),
            }],
            weights_hint: $hint,
        };
    };
}

vgg_desc!(
    VGG16,
    16,
    "vgg16",
    LAYERS16,
    19,
    "vgg16.npy from machrisaa/tensorflow-vgg (the seed's flowers notebook); put it in weights/"
);
vgg_desc!(
    VGG19,
    19,
    "vgg19",
    LAYERS19,
    22,
    "vgg19.npy from machrisaa/tensorflow-vgg; put it in weights/"
);

/// Convolutions per block.
fn blocks(depth: usize) -> [usize; 5] {
    if depth == 19 {
        [2, 2, 4, 4, 4]
    } else {
        [2, 2, 3, 3, 3]
    }
}

const WIDTHS: [usize; 5] = [64, 128, 256, 512, 512];

pub const LAYERS16: &[&str] = &[
    "input", "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2",
    "conv3_3", "pool3", "conv4_1", "conv4_2", "conv4_3", "pool4", "conv5_1", "conv5_2", "conv5_3",
    "pool5", "fc6", "fc7", "fc8",
];

pub const LAYERS19: &[&str] = &[
    "input", "conv1_1", "conv1_2", "pool1", "conv2_1", "conv2_2", "pool2", "conv3_1", "conv3_2",
    "conv3_3", "conv3_4", "pool3", "conv4_1", "conv4_2", "conv4_3", "conv4_4", "pool4", "conv5_1",
    "conv5_2", "conv5_3", "conv5_4", "pool5", "fc6", "fc7", "fc8",
];

pub fn layers(depth: usize) -> &'static [&'static str] {
    if depth == 19 {
        LAYERS19
    } else {
        LAYERS16
    }
}

pub fn params(depth: usize) -> Vec<ParamSpec> {
    let names = layers(depth);
    let at = |layer: &str| names.iter().position(|l| *l == layer).unwrap_or(0);
    let convs = names.iter().filter(|l| l.starts_with("conv"));
    let per_block = blocks(depth);
    let widths = per_block
        .iter()
        .zip(WIDTHS)
        .flat_map(|(&n, w)| std::iter::repeat_n(w, n));
    let mut out = Vec::new();
    let mut cin = 3;
    for (&layer, cout) in convs.zip(widths) {
        let kind = ParamKind::Conv {
            kh: 3,
            kw: 3,
            cin,
            cout,
            groups: 1,
            bias: true,
        };
        out.push(ParamSpec::new(layer, at(layer), kind));
        cin = cout;
    }
    for (layer, cin, cout, flatten_chw) in [
        ("fc6", 25088, 4096, Some((512, 7, 7))),
        ("fc7", 4096, 4096, None),
        ("fc8", 4096, 1000, None),
    ] {
        let kind = ParamKind::Fc {
            cin,
            cout,
            flatten_chw,
        };
        out.push(ParamSpec::new(layer, at(layer), kind));
    }
    out
}

/// Output shape of a layer for one image of `input x input` pixels: 3x3 SAME convolutions keep
/// the side, each 2x2/2 VALID pooling halves it (rounding down). At 224: 224, 112, 56, 28, 14, 7.
pub fn output_shape_at(depth: usize, layer: usize, input: usize) -> Vec<usize> {
    let names = layers(depth);
    let name = names.get(layer).copied().unwrap_or("fc8");
    match name {
        "input" => vec![3, input, input],
        "fc6" | "fc7" => vec![4096],
        "fc8" => vec![1000],
        n => {
            let block: usize = n[4..5].parse().unwrap_or(1);
            let side = input >> (block - if n.starts_with("pool") { 0 } else { 1 });
            vec![WIDTHS[block - 1], side, side]
        }
    }
}

/// Output shape of a layer at the standard 224x224 input.
pub fn output_shape(depth: usize, layer: usize) -> Vec<usize> {
    output_shape_at(depth, layer, INPUT_SIZE)
}

/// torchvision's VGG names -> runner's (`features.N` / `classifier.N`).
pub fn torchvision_name(depth: usize, runner: &str) -> Option<String> {
    let names = layers(depth);
    let (layer, suffix) = runner.rsplit_once('.')?;
    let idx = match layer {
        "fc6" => return Some(format!("classifier.0.{suffix}")),
        "fc7" => return Some(format!("classifier.3.{suffix}")),
        "fc8" => return Some(format!("classifier.6.{suffix}")),
        l => names.iter().position(|n| *n == l)?,
    };
    // features.N counts conv (+ReLU) and pool modules: each conv is 2 modules, each pool 1
    let mut n = 0;
    for &name in &names[1..idx] {
        n += if name.starts_with("pool") { 1 } else { 2 };
    }
    Some(format!("features.{n}.{suffix}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_names() {
        let p = params(16);
        assert_eq!(p.len(), 16);
        assert_eq!(p[0].weight_shape(), vec![64, 3, 3, 3]);
        assert_eq!(p[12].layer, "conv5_3");
        assert_eq!(params(19).len(), 19);
        assert_eq!(output_shape(16, 18), vec![512, 7, 7]);
        assert_eq!(output_shape(16, 17), vec![512, 14, 14]);
        assert_eq!(output_shape(16, 1), vec![64, 224, 224]);
        assert_eq!(
            torchvision_name(16, "conv1_1.weight").as_deref(),
            Some("features.0.weight")
        );
        assert_eq!(
            torchvision_name(16, "conv2_1.bias").as_deref(),
            Some("features.5.bias")
        );
        assert_eq!(
            torchvision_name(16, "conv5_3.weight").as_deref(),
            Some("features.28.weight")
        );
        assert_eq!(
            torchvision_name(19, "conv5_4.weight").as_deref(),
            Some("features.34.weight")
        );
        assert_eq!(
            torchvision_name(16, "fc7.weight").as_deref(),
            Some("classifier.3.weight")
        );
    }
}
