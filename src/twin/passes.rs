//! Rewrites of an ONNX graph before tract sees it, for patterns exporters write that tract cannot
//! type as they stand. Each pass takes the proto and returns a rewritten copy, or `None` when it
//! has nothing to do; the file on disk is never changed.
//!
//! - `inline_constant_ifs`: torch's TorchScript exporter writes `x.squeeze(-1)` on a tensor whose
//!   last size it cannot prove to be 1 as an `If` on that size, with a squeezing and a
//!   non-squeezing branch of different ranks. tract types both branches and refuses an `If` whose
//!   branches disagree, although rig fixes every input shape and so makes the condition a
//!   constant. The pass asks tract's analysis for the condition's value and puts the taken
//!   branch's nodes in place of the `If`.

use std::collections::HashSet;

use tract_onnx::pb;
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

/// `proto` with each top-level `If` whose condition tract's analysis (of `model`, parsed from
/// `proto` with rig's input shapes set) finds constant replaced by its taken branch. `None` when
/// there is no such `If`. An `If` whose branch would define a name the graph already has is left
/// alone (tract then reports it as before).
pub fn inline_constant_ifs(
    proto: &pb::ModelProto,
    model: &mut InferenceModel,
) -> Option<pb::ModelProto> {
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
    let mut changed = false;
    for node in std::mem::take(&mut g.node) {
        let taken = (node.op_type == "If")
            .then(|| condition(model, &node))
            .flatten()
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
        tracing::debug!(
            "twin: If node {:?} has a constant condition under rig's input shapes; inlined its taken branch",
            node.name
        );
        changed = true;
    }
    g.node = nodes;
    changed.then_some(out)
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
