//! Rewrites of an ONNX graph before tract sees it, for patterns exporters write that tract cannot
//! type as they stand, or type into something slow. Each pass takes the proto and returns a
//! rewritten copy, or `None` when it has nothing to do; the file on disk is never changed.
//! `TWINRIG_NO_SPEED_PASSES=1` turns off the passes that only make a graph faster
//! (`grid_sample_as_gather`), to measure what they gain.
//!
//! - `inline_constant_ifs`: torch's TorchScript exporter writes `x.squeeze(-1)` on a tensor whose
//!   last size it cannot prove to be 1 as an `If` on that size, with a squeezing and a
//!   non-squeezing branch of different ranks. tract types both branches and refuses an `If` whose
//!   branches disagree, although rig fixes every input shape and so makes the condition a
//!   constant. The pass asks tract's analysis for the condition's value and puts the taken
//!   branch's nodes in place of the `If`.
//! - `grid_sample_as_gather`: a GridSample read-out (fnn, neuralpredictors: each neuron reads the
//!   feature map at a learned position) has a constant grid, yet tract samples it as a general
//!   GridSample, 100x slower than onnxruntime. With the grid known, each output point is 4 fixed
//!   taps with fixed bilinear weights: the pass writes it as one Gather of the 4 taps, a Mul by
//!   the weights and a ReduceSum.

use std::collections::HashSet;

use tract_onnx::pb;
use tract_onnx::pb::attribute_proto::AttributeType;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// A rewrite: the proto and the model tract parsed from it (inputs fixed) in; out, a rewritten
/// proto and one line per rewritten node (shown by `rig twin info`), or `None` when it does not
/// apply.
pub type Pass = fn(&pb::ModelProto, &mut InferenceModel) -> Option<(pb::ModelProto, Vec<String>)>;

/// `proto` with each top-level `If` whose condition tract's analysis (of `model`, parsed from
/// `proto` with rig's input shapes set) finds constant replaced by its taken branch. `None` when
/// there is no such `If`. An `If` whose branch would define a name the graph already has is left
/// alone (tract then reports it as before).
pub fn inline_constant_ifs(
    proto: &pb::ModelProto,
    model: &mut InferenceModel,
) -> Option<(pb::ModelProto, Vec<String>)> {
    let graph = proto.graph.as_ref()?;
    if !graph.node.iter().any(|n| n.op_type == "If") {
        return None;
    }
    // Facts as far as analysis gets; an `If` tract cannot settle stays unresolved.
    let _ = model.analyse(false);
    let mut defined: HashSet<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter().cloned())
        .chain(graph.input.iter().map(|v| v.name.clone()))
        .chain(graph.initializer.iter().map(|t| t.name.clone()))
        .collect();
    let mut out = proto.clone();
    let g = out.graph.as_mut().expect("checked above");
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut notes = Vec::new();
    for node in std::mem::take(&mut g.node) {
        let cond = (node.op_type == "If")
            .then(|| condition(model, &node))
            .flatten();
        let taken = cond
            .and_then(|c| branch(&node, if c { "then_branch" } else { "else_branch" }))
            .filter(|b| b.output.len() == node.output.len())
            .filter(|b| {
                b.node
                    .iter()
                    .flat_map(|n| n.output.iter())
                    .chain(b.initializer.iter().map(|t| &t.name))
                    .all(|name| !defined.contains(name))
            });
        let Some(b) = taken else {
            nodes.push(node);
            continue;
        };
        for n in &b.node {
            defined.extend(n.output.iter().cloned());
        }
        g.initializer.extend(b.initializer.iter().cloned());
        nodes.extend(b.node.iter().cloned());
        for (from, to) in b.output.iter().zip(&node.output) {
            nodes.push(pb::NodeProto {
                op_type: "Identity".into(),
                name: format!("{}/inlined/{}", node.name, to),
                input: vec![from.name.clone()],
                output: vec![to.clone()],
                ..Default::default()
            });
        }
        notes.push(format!(
            "If {:?}: condition {} under rig's input shapes; its {} branch inlined",
            node.name,
            cond.unwrap_or_default(),
            if cond == Some(true) { "then" } else { "else" }
        ));
        tracing::debug!("twin: {}", notes.last().expect("just pushed"));
    }
    g.node = nodes;
    (!notes.is_empty()).then_some((out, notes))
}

/// The condition of `If` node `node` as tract's analysis knows it, if it is a constant.
fn condition(model: &InferenceModel, node: &pb::NodeProto) -> Option<bool> {
    if node.name.is_empty() {
        return None;
    }
    let id = model.node_by_name(&node.name).ok()?.id;
    let input = *model.node(id).inputs.first()?;
    let value = model.outlet_fact(input).ok()?.value.concretize()?;
    value.cast_to_scalar::<bool>().ok()
}

fn branch<'a>(node: &'a pb::NodeProto, name: &str) -> Option<&'a pb::GraphProto> {
    node.attribute
        .iter()
        .find(|a| a.name == name)
        .and_then(|a| a.g.as_ref())
}

/// `proto` with every GridSample whose grid is a constant (an initializer, or one `Expand`ed over
/// the batch) rewritten as a 4-tap Gather, when its mode is bilinear and its padding zeros or
/// border; `model` is `proto` parsed with rig's input shapes (for the feature map's size). `None`
/// when there is nothing to rewrite. A GridSample with a data-dependent grid is left to tract.
pub fn grid_sample_as_gather(
    proto: &pb::ModelProto,
    model: &mut InferenceModel,
) -> Option<(pb::ModelProto, Vec<String>)> {
    let graph = proto.graph.as_ref()?;
    if !graph.node.iter().any(|n| n.op_type == "GridSample") {
        return None;
    }
    let _ = model.analyse(false);
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let mut out = proto.clone();
    let g = out.graph.as_mut().expect("checked above");
    let mut nodes = Vec::with_capacity(g.node.len());
    let mut added = Vec::new();
    let mut notes = Vec::new();
    for node in std::mem::take(&mut g.node) {
        let plan = (node.op_type == "GridSample")
            .then(|| gather_plan(graph, model, &node))
            .flatten();
        let Some(taps) = plan else {
            nodes.push(node);
            continue;
        };
        let name = |s: &str| format!("{}/as_gather/{s}", node.name);
        let p = taps.ho * taps.wo;
        added.push(super::onnx::tensor_i64(
            &name("flat_shape"),
            &[3],
            &[0, 0, -1],
        ));
        added.push(super::onnx::tensor_i64(
            &name("taps"),
            &[4 * p],
            &taps.index,
        ));
        added.push(super::onnx::tensor_i64(
            &name("tap_shape"),
            &[4],
            &[0, 0, 4, p as i64],
        ));
        added.push(super::onnx::tensor_f32(
            &name("weights"),
            &[4, p],
            &taps.weight,
        ));
        added.push(super::onnx::tensor_i64(&name("axes"), &[1], &[2]));
        added.push(super::onnx::tensor_i64(
            &name("out_shape"),
            &[4],
            &[0, 0, taps.ho as i64, taps.wo as i64],
        ));
        let n = |op: &str, inputs: Vec<String>, output: String, attribute| pb::NodeProto {
            op_type: op.into(),
            name: format!("{output}/node"),
            input: inputs,
            output: vec![output],
            attribute,
            ..Default::default()
        };
        let x = node.input[0].clone();
        nodes.push(n(
            "Reshape",
            vec![x, name("flat_shape")],
            name("flat"),
            vec![],
        ));
        nodes.push(n(
            "Gather",
            vec![name("flat"), name("taps")],
            name("gathered"),
            vec![super::onnx::attr_i("axis", 2)],
        ));
        nodes.push(n(
            "Reshape",
            vec![name("gathered"), name("tap_shape")],
            name("by_tap"),
            vec![],
        ));
        nodes.push(n(
            "Mul",
            vec![name("by_tap"), name("weights")],
            name("weighted"),
            vec![],
        ));
        let keep = super::onnx::attr_i("keepdims", 0);
        nodes.push(if opset >= 13 {
            n(
                "ReduceSum",
                vec![name("weighted"), name("axes")],
                name("sum"),
                vec![keep],
            )
        } else {
            n(
                "ReduceSum",
                vec![name("weighted")],
                name("sum"),
                vec![keep, super::onnx::attr_ints("axes", &[2])],
            )
        });
        nodes.push(n(
            "Reshape",
            vec![name("sum"), name("out_shape")],
            node.output[0].clone(),
            vec![],
        ));
        notes.push(format!(
            "GridSample {:?}: constant grid of {}x{} points on a {}x{} map; sampled as a 4-tap gather",
            node.name, taps.ho, taps.wo, taps.h, taps.w
        ));
        tracing::debug!("twin: {}", notes.last().expect("just pushed"));
    }
    g.node = nodes;
    g.initializer.extend(added);
    (!notes.is_empty()).then_some((out, notes))
}

/// The 4 taps of every output point of a constant-grid GridSample: flat indices into the
/// feature map (tap-major: tap k of point p at k * P + p) and bilinear weights (0 for a tap
/// outside the map under zeros padding).
struct Taps {
    h: usize,
    w: usize,
    ho: usize,
    wo: usize,
    index: Vec<i64>,
    weight: Vec<f32>,
}

fn gather_plan(
    graph: &pb::GraphProto,
    model: &InferenceModel,
    node: &pb::NodeProto,
) -> Option<Taps> {
    let attr_s = |k: &str, default: &str| -> String {
        node.attribute
            .iter()
            .find(|a| a.name == k)
            .map_or(default.to_string(), |a| {
                String::from_utf8_lossy(&a.s).into_owned()
            })
    };
    let attr_i = |k: &str| {
        node.attribute
            .iter()
            .find(|a| a.name == k)
            .map_or(0, |a| a.i)
    };
    let mode = attr_s("mode", "bilinear");
    let padding = attr_s("padding_mode", "zeros");
    if !matches!(mode.as_str(), "bilinear" | "linear")
        || !matches!(padding.as_str(), "zeros" | "border")
    {
        return None;
    }
    if node
        .attribute
        .iter()
        .any(|a| a.r#type != AttributeType::Int as i32 && a.r#type != AttributeType::String as i32)
    {
        return None;
    }
    let align = attr_i("align_corners") != 0;
    let (dims, grid) = constant_grid(graph, node.input.get(1)?)?;
    // One grid for the whole batch: [1, Ho, Wo, 2].
    if dims.len() != 4 || dims[0] != 1 || dims[3] != 2 {
        return None;
    }
    let (ho, wo) = (dims[1] as usize, dims[2] as usize);
    if grid.len() != ho * wo * 2 {
        return None; // e.g. weights in an external-data file: left to tract
    }
    // The feature map's size, as tract inferred it under rig's input shapes.
    let id = model.node_by_name(&node.name).ok()?.id;
    let x = *model.node(id).inputs.first()?;
    let shape = model.outlet_fact(x).ok()?.shape.concretize()?;
    if shape.len() != 4 {
        return None;
    }
    let (h, w) = (
        shape[2].to_i64().ok()? as usize,
        shape[3].to_i64().ok()? as usize,
    );
    let p = ho * wo;
    let mut index = vec![0i64; 4 * p];
    let mut weight = vec![0f32; 4 * p];
    // ONNX GridSample: x indexes the width, y the height, both normalised to [-1, 1].
    let unnorm = |v: f64, size: usize| -> f64 {
        if align {
            (v + 1.0) / 2.0 * (size as f64 - 1.0)
        } else {
            ((v + 1.0) * size as f64 - 1.0) / 2.0
        }
    };
    for q in 0..p {
        let (gx, gy) = (grid[2 * q] as f64, grid[2 * q + 1] as f64);
        if !gx.is_finite() || !gy.is_finite() {
            return None;
        }
        let (mut ix, mut iy) = (unnorm(gx, w), unnorm(gy, h));
        if padding == "border" {
            ix = ix.clamp(0.0, w as f64 - 1.0);
            iy = iy.clamp(0.0, h as f64 - 1.0);
        }
        let (x0, y0) = (ix.floor(), iy.floor());
        let (fx, fy) = (ix - x0, iy - y0);
        let taps = [
            (x0, y0, (1.0 - fx) * (1.0 - fy)),
            (x0 + 1.0, y0, fx * (1.0 - fy)),
            (x0, y0 + 1.0, (1.0 - fx) * fy),
            (x0 + 1.0, y0 + 1.0, fx * fy),
        ];
        for (k, (tx, ty, wt)) in taps.into_iter().enumerate() {
            let inside = tx >= 0.0 && ty >= 0.0 && tx < w as f64 && ty < h as f64;
            if inside {
                index[k * p + q] = ty as i64 * w as i64 + tx as i64;
                weight[k * p + q] = wt as f32;
            }
        }
    }
    Some(Taps {
        h,
        w,
        ho,
        wo,
        index,
        weight,
    })
}

/// The grid's value when it is a float initializer, or an initializer with a batch of 1 that an
/// `Expand` spreads over the batch: (dims, values).
fn constant_grid(graph: &pb::GraphProto, name: &str) -> Option<(Vec<i64>, Vec<f32>)> {
    let init = |n: &str| graph.initializer.iter().find(|t| t.name == n);
    let source = match init(name) {
        Some(t) => t,
        None => {
            let producer = graph
                .node
                .iter()
                .find(|n| n.output.iter().any(|o| o == name))?;
            if producer.op_type != "Expand" {
                return None;
            }
            init(producer.input.first()?)?
        }
    };
    Some((source.dims.clone(), super::onnx::tensor_to_f32(source)?))
}
