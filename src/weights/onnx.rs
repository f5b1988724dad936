//! ONNX models (`.onnx`) as weights files: the graph's initializers, mapped to an architecture
//! by the order of its `Conv` and `Gemm`/`MatMul` nodes and checked by shape. So tf2onnx exports
//! of Keras models (VGG16's "notop" base included), the ONNX Model Zoo's `bvlcalexnet-12.onnx`
//! (the seed's AlexNet, grouped conv2/4/5 in one node each) and VGG exports load alike.
//!
//! The protobuf is decoded by `prost` with the few messages and fields runner needs (unknown
//! fields are skipped). Layouts: `Conv` weights are stored OIHW, runner's layout. Fully
//! connected weights are `[out, in]` for `Gemm` with `transB = 1` (Caffe, PyTorch) and `[in,
//! out]` for `MatMul` or `Gemm` without it (TensorFlow). The flatten before fc6 is NHWC when the
//! graph transposes to channels-last (perm 0,2,3,1) before its first fully connected node, as
//! TensorFlow exports do, and NCHW otherwise (Caffe, PyTorch).

use std::collections::HashMap;
use std::path::Path;

use prost::Message;

use super::{tf_to_candle, HostTensor, StoredTensor, WeightSet};
use crate::arch::{Arch, ParamKind, ParamSpec};
use crate::error::{Error, Result};

#[derive(Clone, PartialEq, Message)]
pub struct ModelProto {
    #[prost(int64, tag = "1")]
    pub ir_version: i64,
    #[prost(string, tag = "2")]
    pub producer_name: String,
    #[prost(message, optional, tag = "7")]
    pub graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    pub node: Vec<NodeProto>,
    #[prost(string, tag = "2")]
    pub name: String,
    #[prost(message, repeated, tag = "5")]
    pub initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    pub input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    pub output: Vec<String>,
    #[prost(string, tag = "3")]
    pub name: String,
    #[prost(string, tag = "4")]
    pub op_type: String,
    #[prost(message, repeated, tag = "5")]
    pub attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, Message)]
pub struct AttributeProto {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int64, tag = "3")]
    pub i: i64,
    #[prost(int64, repeated, tag = "8")]
    pub ints: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    pub dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    pub data_type: i32,
    #[prost(float, repeated, tag = "4")]
    pub float_data: Vec<f32>,
    #[prost(string, tag = "8")]
    pub name: String,
    #[prost(bytes = "vec", tag = "9")]
    pub raw_data: Vec<u8>,
    #[prost(int32, tag = "14")]
    pub data_location: i32,
}

const FLOAT: i32 = 1;

/// ONNX's tensor element types, for `inspect`.
fn dtype_name(t: i32) -> &'static str {
    match t {
        1 => "float32",
        2 => "uint8",
        3 => "int8",
        5 => "int16",
        6 => "int32",
        7 => "int64",
        9 => "bool",
        10 => "float16",
        11 => "float64",
        16 => "bfloat16",
        _ => "other",
    }
}

/// Whether `bytes` look like an ONNX model: a protobuf whose first field is `ir_version`
/// (field 1, varint) and that decodes to a model with a graph.
pub fn looks_like_onnx(bytes: &[u8]) -> bool {
    bytes.first() == Some(&0x08) && decode(bytes).is_ok_and(|m| m.graph.is_some())
}

fn decode(bytes: &[u8]) -> std::result::Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

fn graph(path: &Path, bytes: &[u8]) -> Result<GraphProto> {
    let m =
        decode(bytes).map_err(|e| Error::format(path, format!("not a valid ONNX model: {e}")))?;
    m.graph
        .ok_or_else(|| Error::format(path, "is an ONNX model without a graph"))
}

fn dims(t: &TensorProto) -> Vec<usize> {
    t.dims.iter().map(|&d| d.max(0) as usize).collect()
}

/// The float values of an initializer.
fn floats(path: &Path, t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_location == 1 {
        return Err(Error::weights(
            path,
            format!(
                "initializer {} keeps its data in an external file; re-export with the weights inside the model (onnx.save with save_as_external_data=False)",
                t.name
            ),
        ));
    }
    if t.data_type != FLOAT {
        return Err(Error::weights(
            path,
            format!(
                "initializer {} is {}, not float32",
                t.name,
                dtype_name(t.data_type)
            ),
        ));
    }
    let n: usize = dims(t).iter().product();
    let v: Vec<f32> = if !t.raw_data.is_empty() {
        t.raw_data
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    } else {
        t.float_data.clone()
    };
    if v.len() != n {
        return Err(Error::weights(
            path,
            format!(
                "initializer {} holds {} values for shape {:?}",
                t.name,
                v.len(),
                dims(t)
            ),
        ));
    }
    Ok(v)
}

/// The initializers as stored (name, shape, element type), for `runner weights inspect`.
pub fn inspect(path: &Path, bytes: &[u8]) -> Result<Vec<StoredTensor>> {
    Ok(graph(path, bytes)?
        .initializer
        .iter()
        .map(|t| StoredTensor {
            name: t.name.clone(),
            shape: dims(t),
            dtype: dtype_name(t.data_type).to_string(),
        })
        .collect())
}

/// One weighted node of the graph, in graph order.
struct Weighted<'a> {
    node: &'a str,
    w: &'a TensorProto,
    b: Option<&'a TensorProto>,
    /// fc weights stored `[out, in]` (`Gemm` with `transB = 1`)
    out_in: bool,
}

fn attr(n: &NodeProto, name: &str) -> Option<i64> {
    n.attribute.iter().find(|a| a.name == name).map(|a| a.i)
}

/// The graph's convolutions and fully connected layers in order, and whether it flattens
/// channels-last before the first fully connected one.
fn weighted<'a>(
    g: &'a GraphProto,
    init: &HashMap<&str, &'a TensorProto>,
) -> (Vec<Weighted<'a>>, Vec<Weighted<'a>>, bool) {
    let (mut convs, mut fcs) = (Vec::new(), Vec::new());
    let mut nhwc = false;
    for (k, n) in g.node.iter().enumerate() {
        let input = |i: usize| n.input.get(i).and_then(|s| init.get(s.as_str()).copied());
        match n.op_type.as_str() {
            "Conv" => {
                if let Some(w) = input(1) {
                    convs.push(Weighted {
                        node: &n.name,
                        w,
                        b: input(2),
                        out_in: false,
                    });
                }
            }
            "Gemm" | "MatMul" => {
                let Some(w) = input(1) else { continue };
                let b = if n.op_type == "Gemm" {
                    input(2)
                } else {
                    // the bias of a MatMul comes in the Add that takes its output
                    let out = n.output.first();
                    g.node[k + 1..]
                        .iter()
                        .find(|a| a.op_type == "Add" && a.input.iter().any(|i| Some(i) == out))
                        .and_then(|a| a.input.iter().find_map(|i| init.get(i.as_str()).copied()))
                };
                let out_in = n.op_type == "Gemm" && attr(n, "transB") == Some(1);
                fcs.push(Weighted {
                    node: &n.name,
                    w,
                    b,
                    out_in,
                });
            }
            "Transpose" if fcs.is_empty() && !convs.is_empty() => {
                let perm = n.attribute.iter().find(|a| a.name == "perm");
                if perm.is_some_and(|p| p.ints == [0, 2, 3, 1]) {
                    nhwc = true;
                } else if perm.is_some_and(|p| p.ints == [0, 3, 1, 2]) {
                    nhwc = false;
                }
            }
            _ => {}
        }
    }
    (convs, fcs, nhwc)
}

/// Load the layers `need` of `arch` from an ONNX model, in runner's layout.
pub fn load(path: &Path, bytes: &[u8], arch: Arch, need: &[ParamSpec]) -> Result<WeightSet> {
    let g = graph(path, bytes)?;
    let init: HashMap<&str, &TensorProto> =
        g.initializer.iter().map(|t| (t.name.as_str(), t)).collect();
    let (convs, fcs, nhwc) = weighted(&g, &init);
    let (mut ci, mut fi) = (convs.iter(), fcs.iter());
    let mut set = WeightSet::default();
    let counts = format!(
        "the model has {} Conv and {} Gemm/MatMul nodes with weights",
        convs.len(),
        fcs.len()
    );
    for spec in need {
        if !spec.is_weight_bias() {
            return Err(Error::weights(
                path,
                format!(
                    "ONNX models are mapped to runner's layers by the order of their Conv and Gemm/MatMul nodes, which serves weight + bias layers only; {} also needs {} ({:?}). Export the weights as a state dict (.safetensors or .pth) instead",
                    arch.name(),
                    spec.layer,
                    spec.kind
                ),
            ));
        }
        let is_conv = matches!(spec.kind, ParamKind::Conv { .. });
        let next = if is_conv { ci.next() } else { fi.next() };
        let Some(wn) = next else {
            return Err(Error::weights(
                path,
                format!(
                    "has no {} node for layer {} ({}); set backbone.output to a lower layer",
                    if is_conv { "Conv" } else { "Gemm/MatMul" },
                    spec.layer,
                    counts
                ),
            ));
        };
        let want = spec.weight_shape();
        let data = weights_of(path, spec, wn, nhwc)?;
        let bias = bias_of(path, spec, wn)?;
        set.tensors.insert(
            format!("{}.weight", spec.layer),
            HostTensor { shape: want, data },
        );
        set.tensors.insert(
            format!("{}.bias", spec.layer),
            HostTensor {
                shape: vec![spec.bias_len()],
                data: bias,
            },
        );
    }
    let unused = ci.count() + fi.count();
    if unused > 0 {
        tracing::info!(
            "{}: {unused} weighted node(s) of the model are above backbone.output (or not part of {}) and not loaded",
            path.display(),
            arch.name()
        );
    }
    Ok(set)
}

/// A node's weight in runner's layout: conv kernels as stored (OIHW); fc matrices transposed
/// to `[out, in]`, with fc6's inputs moved from NHWC to NCHW flatten order when the graph
/// flattens channels-last.
fn weights_of(path: &Path, spec: &ParamSpec, wn: &Weighted<'_>, nhwc: bool) -> Result<Vec<f32>> {
    let (w, shape) = (floats(path, wn.w)?, dims(wn.w));
    let want = spec.weight_shape();
    if matches!(spec.kind, ParamKind::Conv { .. }) {
        check(path, spec, wn, &shape, &want)?;
        return Ok(w);
    }
    let tf = spec.seed_weight_shape(); // [in, out]
    let as_tf = if wn.out_in {
        check(path, spec, wn, &shape, &want)?;
        transpose(&w, want[0], want[1])
    } else {
        check(path, spec, wn, &shape, &tf)?;
        w
    };
    // tf_to_candle moves NHWC-flatten rows to NCHW for fc6; an NCHW-flattening export only
    // needs the transpose
    let layout = match (&spec.kind, nhwc) {
        (ParamKind::Fc { cin, cout, .. }, false) => ParamSpec {
            kind: ParamKind::Fc {
                cin: *cin,
                cout: *cout,
                flatten_chw: None,
            },
            ..spec.clone()
        },
        _ => spec.clone(),
    };
    Ok(tf_to_candle(&layout, &as_tf))
}

/// A node's bias (zeros when it has none), checked by length.
fn bias_of(path: &Path, spec: &ParamSpec, wn: &Weighted<'_>) -> Result<Vec<f32>> {
    let bias = match wn.b {
        Some(b) => floats(path, b)?,
        None => vec![0.0; spec.bias_len()],
    };
    if bias.len() != spec.bias_len() {
        return Err(Error::weights(
            path,
            format!(
                "node {} (layer {}): bias has {} values, expected {}",
                wn.node,
                spec.layer,
                bias.len(),
                spec.bias_len()
            ),
        ));
    }
    Ok(bias)
}

fn check(
    path: &Path,
    spec: &ParamSpec,
    wn: &Weighted<'_>,
    shape: &[usize],
    want: &[usize],
) -> Result<()> {
    if shape == want {
        return Ok(());
    }
    Err(Error::weights(
        path,
        format!(
            "node {} ({}) maps to layer {} but its weight has shape {shape:?}, expected {want:?}; the file does not hold this architecture's {} (set backbone.output below it)",
            wn.node, wn.w.name, spec.layer, spec.layer
        ),
    ))
}

/// `[r, c]` -> `[c, r]`.
fn transpose(w: &[f32], r: usize, c: usize) -> Vec<f32> {
    let mut out = vec![0f32; w.len()];
    for i in 0..r {
        for j in 0..c {
            out[j * r + i] = w[i * c + j];
        }
    }
    out
}
