//! Writing ONNX files from Rust: a small graph builder over the protobuf types tract-onnx exposes
//! (`tract_onnx::pb`), encoded with the same `prost` version.
//!
//! Every file rig writes uses opset 17 and IR version 8, which both tract and onnxruntime load.

use std::path::Path;

use prost::Message;
use tract_onnx::pb;
use tract_onnx::pb::tensor_shape_proto::dimension::Value as DimValue;

use super::TwinError;

pub const OPSET: i64 = 17;
pub const IR_VERSION: i64 = 8;
/// ONNX element types used here.
pub const FLOAT: i32 = 1;
pub const INT64: i32 = 7;

/// A dimension of a graph input or output: a fixed size or a named symbol (the batch).
#[derive(Debug, Clone, PartialEq)]
pub enum Dim {
    Fixed(i64),
    Sym(String),
}

pub fn value_info(name: &str, elem_type: i32, dims: &[Dim]) -> pb::ValueInfoProto {
    let dim = dims
        .iter()
        .map(|d| pb::tensor_shape_proto::Dimension {
            denotation: String::new(),
            value: Some(match d {
                Dim::Fixed(v) => DimValue::DimValue(*v),
                Dim::Sym(s) => DimValue::DimParam(s.clone()),
            }),
        })
        .collect();
    pb::ValueInfoProto {
        name: name.to_string(),
        r#type: Some(pb::TypeProto {
            denotation: String::new(),
            value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                elem_type,
                shape: Some(pb::TensorShapeProto { dim }),
            })),
        }),
        doc_string: String::new(),
    }
}

/// Shape of a value info as `Dim`s (`None` when the type or shape is absent).
pub fn value_info_dims(v: &pb::ValueInfoProto) -> Option<(i32, Vec<Dim>)> {
    let Some(pb::type_proto::Value::TensorType(t)) = v.r#type.as_ref()?.value.as_ref() else {
        return None;
    };
    let shape = t.shape.as_ref()?;
    let dims = shape
        .dim
        .iter()
        .map(|d| match &d.value {
            Some(DimValue::DimValue(v)) => Dim::Fixed(*v),
            Some(DimValue::DimParam(s)) => Dim::Sym(s.clone()),
            None => Dim::Sym("?".into()),
        })
        .collect();
    Some((t.elem_type, dims))
}

pub fn fmt_dims(d: &[Dim]) -> String {
    let parts: Vec<String> = d
        .iter()
        .map(|d| match d {
            Dim::Fixed(v) => v.to_string(),
            Dim::Sym(s) => s.clone(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

pub fn tensor_f32(name: &str, dims: &[usize], data: &[f32]) -> pb::TensorProto {
    debug_assert_eq!(dims.iter().product::<usize>(), data.len());
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: FLOAT,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

pub fn tensor_i64(name: &str, dims: &[usize], data: &[i64]) -> pb::TensorProto {
    pb::TensorProto {
        name: name.to_string(),
        dims: dims.iter().map(|&d| d as i64).collect(),
        data_type: INT64,
        raw_data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Reads a float initializer back (raw_data or float_data).
pub fn tensor_to_f32(t: &pb::TensorProto) -> Option<Vec<f32>> {
    if t.data_type != FLOAT {
        return None;
    }
    if !t.raw_data.is_empty() {
        Some(
            t.raw_data
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect(),
        )
    } else {
        Some(t.float_data.clone())
    }
}

pub fn attr_i(name: &str, v: i64) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Int as i32,
        i: v,
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: pb::attribute_proto::AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// Builds a graph node by node; names of intermediate values are generated.
#[derive(Debug, Default, Clone)]
pub struct GraphBuilder {
    pub graph: pb::GraphProto,
    counter: usize,
    prefix: String,
}

impl GraphBuilder {
    pub fn new(name: &str) -> Self {
        GraphBuilder {
            graph: pb::GraphProto {
                name: name.into(),
                ..Default::default()
            },
            counter: 0,
            prefix: String::new(),
        }
    }

    /// Continues an existing graph; new value names start with `prefix` to avoid clashes.
    pub fn extend(graph: pb::GraphProto, prefix: &str) -> Self {
        GraphBuilder {
            graph,
            counter: 0,
            prefix: prefix.into(),
        }
    }

    fn fresh(&mut self, hint: &str) -> String {
        self.counter += 1;
        format!("{}{}_{}", self.prefix, hint, self.counter)
    }

    pub fn input(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.input.push(value_info(name, elem_type, dims));
    }

    pub fn output(&mut self, name: &str, elem_type: i32, dims: &[Dim]) {
        self.graph.output.push(value_info(name, elem_type, dims));
    }

    pub fn init_f32(&mut self, hint: &str, dims: &[usize], data: &[f32]) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(tensor_f32(&name, dims, data));
        name
    }

    pub fn init_i64(&mut self, hint: &str, dims: &[usize], data: &[i64]) -> String {
        let name = self.fresh(hint);
        self.graph.initializer.push(tensor_i64(&name, dims, data));
        name
    }

    pub fn scalar(&mut self, hint: &str, v: f32) -> String {
        self.init_f32(hint, &[], &[v])
    }

    /// Adds a node with one output; returns the output's name (`out` when given).
    pub fn node(
        &mut self,
        op: &str,
        inputs: &[&str],
        attrs: Vec<pb::AttributeProto>,
        out: Option<&str>,
    ) -> String {
        let o = out
            .map(str::to_string)
            .unwrap_or_else(|| self.fresh(&op.to_lowercase()));
        let name = self.fresh(&format!("n_{}", op.to_lowercase()));
        self.graph.node.push(pb::NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![o.clone()],
            name,
            op_type: op.into(),
            domain: String::new(),
            attribute: attrs,
            doc_string: String::new(),
        });
        o
    }

    pub fn binary(&mut self, op: &str, a: &str, b: &str) -> String {
        self.node(op, &[a, b], vec![], None)
    }

    pub fn unary(&mut self, op: &str, a: &str) -> String {
        self.node(op, &[a], vec![], None)
    }
}

/// Wraps a graph into a model with metadata.
pub fn model(graph: pb::GraphProto, metadata: &[(String, String)], doc: &str) -> pb::ModelProto {
    pb::ModelProto {
        ir_version: IR_VERSION,
        opset_import: vec![pb::OperatorSetIdProto {
            domain: String::new(),
            version: OPSET,
        }],
        producer_name: "twinrig".into(),
        producer_version: crate::VERSION.into(),
        doc_string: doc.into(),
        graph: Some(graph),
        metadata_props: metadata
            .iter()
            .map(|(k, v)| pb::StringStringEntryProto {
                key: k.clone(),
                value: v.clone(),
            })
            .collect(),
        ..Default::default()
    }
}

pub fn encode(m: &pb::ModelProto) -> Vec<u8> {
    m.encode_to_vec()
}

pub fn write_model(m: &pb::ModelProto, path: &Path) -> Result<(), TwinError> {
    std::fs::write(path, encode(m)).map_err(|e| TwinError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// Decodes an ONNX file into its protobuf, refusing anything that is not one.
pub fn read_model(path: &Path) -> Result<pb::ModelProto, TwinError> {
    let bytes = std::fs::read(path).map_err(|e| TwinError::Io {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    let not_onnx = |reason: String| TwinError::NotOnnx {
        path: path.to_path_buf(),
        reason,
    };
    let m = pb::ModelProto::decode(bytes.as_slice())
        .map_err(|e| not_onnx(format!("not a protobuf ModelProto ({e})")))?;
    let Some(g) = m.graph.as_ref() else {
        return Err(not_onnx("no graph in the model".into()));
    };
    if m.ir_version <= 0 || m.opset_import.is_empty() || g.node.is_empty() {
        return Err(not_onnx(format!(
            "decodes as protobuf but is not an ONNX model (ir_version {}, {} opset imports, {} nodes)",
            m.ir_version,
            m.opset_import.len(),
            g.node.len()
        )));
    }
    Ok(m)
}
