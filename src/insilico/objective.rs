//! Objectives: what a candidate stimulus is scored for, from the twin's mean predicted response of
//! every neuron over the clip. An objective expands into *goals*; per-target objectives give one
//! goal per target, and the screen is shared by all of them (the twin predicts every neuron at
//! once, so scoring one more target costs nothing).
//!
//! Scores are measured from the twin's response to the gray screen (`base`), so "0" means "no
//! better than a blank screen" for every objective.

use serde::{Deserialize, Serialize};

use super::InsilicoError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Objective {
    /// Most exciting input of each target: its mean response (one goal per target).
    Neuron,
    /// The mean response of the targets as one group.
    Group,
    /// One-hot control (Bashivan et al. 2019), per target: drive it while every other neuron
    /// stays at its gray-screen response.
    Selectivity,
    /// The targets as one group versus all other neurons.
    GroupSelectivity,
    /// Drive the neurons the twin gets most wrong (weights = per-neuron error on recorded data),
    /// so the next recording is most informative about where the twin fails.
    Explore,
}

pub const OBJECTIVES: &[&str] = &[
    "neuron",
    "group",
    "selectivity",
    "group-selectivity",
    "explore",
];

impl Objective {
    pub fn parse(s: &str) -> Result<Objective, InsilicoError> {
        Ok(match s {
            "neuron" | "mei" | "single" => Objective::Neuron,
            "group" => Objective::Group,
            "selectivity" | "one-hot" => Objective::Selectivity,
            "group-selectivity" => Objective::GroupSelectivity,
            "explore" => Objective::Explore,
            o => {
                return Err(InsilicoError::input(format!(
                    "--objective: unknown objective {o:?}; expected one of {}",
                    OBJECTIVES.join(", ")
                )))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Objective::Neuron => "neuron",
            Objective::Group => "group",
            Objective::Selectivity => "selectivity",
            Objective::GroupSelectivity => "group-selectivity",
            Objective::Explore => "explore",
        }
    }

    /// Whether the objective has one goal per target (and thus per-target plan entries).
    pub fn per_target(self) -> bool {
        matches!(self, Objective::Neuron | Objective::Selectivity)
    }
}

impl std::fmt::Display for Objective {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Twin output columns of `targets` (ROI ids), checked against the twin's `roi_ids` (in output
/// order): each target once and among them, at least one target unless the objective explores,
/// and neurons left over to hold at baseline for the selectivity objectives. `model` names the
/// twin in errors. The search and the control endpoint (`rig status --objective`) share this, so
/// a caller is refused up front for exactly what the search would refuse.
pub fn target_columns(
    objective: Objective,
    targets: &[u32],
    roi_ids: &[u32],
    model: &str,
) -> Result<Vec<usize>, InsilicoError> {
    let mut cols = Vec::with_capacity(targets.len());
    let mut unknown = Vec::new();
    for &t in targets {
        match roi_ids.iter().position(|&r| r == t) {
            Some(col) if cols.contains(&col) => {
                return Err(InsilicoError::input(format!(
                    "--targets: ROI id {t} is named twice"
                )))
            }
            Some(col) => cols.push(col),
            None => unknown.push(t.to_string()),
        }
    }
    if !unknown.is_empty() {
        let (lo, hi) = (
            roi_ids.iter().min().copied().unwrap_or(0),
            roi_ids.iter().max().copied().unwrap_or(0),
        );
        return Err(InsilicoError::input(format!(
            "--targets: ROI id(s) {} are not among the twin's {} neurons ({model}: twin.roi_ids {lo}..={hi})",
            unknown.join(", "),
            roi_ids.len()
        )));
    }
    if cols.is_empty() && objective != Objective::Explore {
        return Err(InsilicoError::input(format!(
            "--targets: objective {objective} needs at least one target ROI id"
        )));
    }
    if matches!(
        objective,
        Objective::Selectivity | Objective::GroupSelectivity
    ) && cols.len() >= roi_ids.len()
    {
        return Err(InsilicoError::input(format!(
            "--targets: objective {objective} needs neurons outside the targets to hold at baseline; all {} are targets",
            roi_ids.len()
        )));
    }
    Ok(cols)
}

/// One thing to maximise.
#[derive(Debug, Clone)]
pub struct Goal {
    /// ROI id of the single target, or -1 for a group goal.
    pub label: i64,
    /// Twin output columns driven, with weights (normalised to sum 1).
    pub targets: Vec<usize>,
    pub weights: Vec<f64>,
    /// Columns held at baseline (selectivity objectives only).
    pub rest: Vec<usize>,
}

impl Goal {
    /// Weighted mean drive of the targets above gray, minus (selectivity) the mean absolute
    /// departure of the rest from gray.
    pub fn score(&self, r: &[f32], base: &[f32]) -> f64 {
        let mut s = 0.0;
        for (&c, &w) in self.targets.iter().zip(&self.weights) {
            s += w * (r[c] as f64 - base[c] as f64);
        }
        if !self.rest.is_empty() {
            let off: f64 = self
                .rest
                .iter()
                .map(|&c| (r[c] as f64 - base[c] as f64).abs())
                .sum();
            s -= off / self.rest.len() as f64;
        }
        s
    }
}

/// Expands an objective into goals over twin columns. `targets` are column indices (already
/// checked), `roi_ids` the twin's ids, `weights` the explore weights (one per column, or empty).
pub fn goals(
    objective: Objective,
    targets: &[usize],
    roi_ids: &[u32],
    weights: &[f32],
) -> Vec<Goal> {
    let n = roi_ids.len();
    let rest_of = |t: &[usize]| -> Vec<usize> { (0..n).filter(|c| !t.contains(c)).collect() };
    let uniform = |k: usize| vec![1.0 / k.max(1) as f64; k];
    match objective {
        Objective::Neuron | Objective::Selectivity => targets
            .iter()
            .map(|&c| Goal {
                label: roi_ids[c] as i64,
                targets: vec![c],
                weights: vec![1.0],
                rest: if objective == Objective::Selectivity {
                    rest_of(&[c])
                } else {
                    Vec::new()
                },
            })
            .collect(),
        Objective::Group | Objective::GroupSelectivity => vec![Goal {
            label: -1,
            targets: targets.to_vec(),
            weights: uniform(targets.len()),
            rest: if objective == Objective::GroupSelectivity {
                rest_of(targets)
            } else {
                Vec::new()
            },
        }],
        Objective::Explore => {
            let cols: Vec<usize> = if targets.is_empty() {
                (0..n).collect()
            } else {
                targets.to_vec()
            };
            let raw: Vec<f64> = cols
                .iter()
                .map(|&c| weights.get(c).map_or(1.0, |&w| w.max(0.0) as f64))
                .collect();
            let sum: f64 = raw.iter().sum();
            let w = if sum > 0.0 {
                raw.iter().map(|v| v / sum).collect()
            } else {
                uniform(cols.len())
            };
            vec![Goal {
                label: -1,
                targets: cols,
                weights: w,
                rest: Vec::new(),
            }]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectivity_penalises_the_rest() {
        let ids = [10, 11, 12];
        let g = goals(Objective::Selectivity, &[0], &ids, &[]);
        assert_eq!(g.len(), 1);
        assert_eq!(g[0].label, 10);
        let base = [0.1, 0.1, 0.1];
        let only = g[0].score(&[1.1, 0.1, 0.1], &base);
        let all = g[0].score(&[1.1, 1.1, 1.1], &base);
        assert!((only - 1.0).abs() < 1e-6 && (all - 0.0).abs() < 1e-6);
    }

    #[test]
    fn targets_are_checked_against_the_twin() {
        let ids = [10, 11, 12];
        assert_eq!(
            target_columns(Objective::Neuron, &[12, 10], &ids, "t.onnx").unwrap(),
            vec![2, 0]
        );
        let e = target_columns(Objective::Neuron, &[99999], &ids, "t.onnx")
            .unwrap_err()
            .to_string();
        assert!(e.contains("99999") && e.contains("10..=12"), "{e}");
        assert!(target_columns(Objective::Neuron, &[10, 10], &ids, "t").is_err());
        assert!(target_columns(Objective::Group, &[], &ids, "t").is_err());
        assert!(target_columns(Objective::Explore, &[], &ids, "t").is_ok());
        assert!(target_columns(Objective::Selectivity, &[10, 11, 12], &ids, "t").is_err());
    }

    #[test]
    fn unknown_objective_names_the_choices() {
        let e = Objective::parse("best").unwrap_err().to_string();
        assert!(e.contains("neuron") && e.contains("\"best\""), "{e}");
    }
}
