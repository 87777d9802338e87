//! The report of an in-silico plan file (`rig insilico --out PLAN.h5`): how it was searched, and
//! each goal's ranked stimuli with their frames and the twin's predicted responses.

use std::path::Path;

use super::html::{Body, Section};
use super::image;
use super::svg::{self, Chart, ACCENT, PREDICTED, SHUFFLED};
use super::{Numbers, Report, ReportError};
use crate::insilico::Plan;
use crate::stats;

/// Stimuli drawn per goal at most (a plan may rank many).
const MAX_PER_GOAL: usize = 12;

pub fn report(path: &Path, plan: &Plan) -> Result<Report, ReportError> {
    let mut nums = Numbers::default();
    nums.set("entries", plan.entries.len() as f64);
    nums.set("targets", plan.targets.len() as f64);
    nums.set("evaluations", plan.evaluations as f64);
    nums.set("budget", plan.budget as f64);
    nums.set("elapsed_s", plan.elapsed_s);
    let scores: Vec<f64> = plan.entries.iter().map(|e| e.score).collect();
    nums.set_opt("median_score", stats::median(&scores));
    nums.set_opt(
        "best_score",
        scores
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .reduce(f64::max),
    );

    let mut o = Body::default();
    o.facts(&[
        (
            "twin",
            format!("{} (digest {})", plan.twin, plan.twin_digest),
        ),
        ("objective", plan.objective.clone()),
        ("targets (ROI ids)", format!("{:?}", plan.targets)),
        (
            "search",
            format!(
                "{} of {} evaluations in {:.1} s, seed {}{}; stage {:?}{}",
                plan.evaluations,
                plan.budget,
                plan.elapsed_s,
                plan.seed,
                if plan.stopped_early {
                    " (stopped early by its time limit)"
                } else {
                    ""
                },
                plan.stage,
                plan.shard
                    .as_ref()
                    .map_or(String::new(), |s| format!(", shard {s:?}"))
            ),
        ),
        (
            "stimuli",
            format!(
                "{} entries of {} frames at {}x{}, {} Hz",
                plan.entries.len(),
                plan.frames,
                plan.width,
                plan.height,
                plan.frame_rate_hz
            ),
        ),
        ("twin neurons", plan.roi_ids.len().to_string()),
        ("written by", format!("twinrig {}", plan.software_version)),
    ]);
    let mut sections = vec![Section::present("overview", "Plan overview", o)];

    if plan.entries.is_empty() {
        sections.push(Section::absent(
            "scores",
            "Scores",
            "the plan has no entries",
        ));
        sections.push(Section::absent(
            "stimuli",
            "Stimuli",
            "the plan has no entries",
        ));
    } else {
        sections.push(scores_section(plan));
        sections.push(stimuli_section(path, plan)?);
    }
    Ok(super::finish(
        "plan",
        path,
        &format!(
            "twinrig plan report: {} for {:?}",
            plan.objective, plan.targets
        ),
        &path.display().to_string(),
        sections,
        nums,
    ))
}

fn goal_name(goal: i64) -> String {
    if goal < 0 {
        "group".into()
    } else {
        format!("ROI {goal}")
    }
}

/// Goals in the plan's order of first appearance.
fn goals(plan: &Plan) -> Vec<i64> {
    let mut g: Vec<i64> = Vec::new();
    for e in &plan.entries {
        if !g.contains(&e.goal) {
            g.push(e.goal);
        }
    }
    g
}

fn scores_section(plan: &Plan) -> Section {
    let mut b = Body::default();
    for goal in goals(plan) {
        let mut es: Vec<_> = plan.for_goal(goal).collect();
        es.sort_by_key(|e| e.rank);
        es.truncate(MAX_PER_GOAL);
        let ti = plan.targets.iter().position(|&t| t as i64 == goal);
        let own: Vec<f64> = es
            .iter()
            .map(|e| match ti {
                Some(i) => e.target_response.get(i).map_or(f64::NAN, |&v| v as f64),
                None => {
                    let v = &e.target_response;
                    v.iter().map(|&x| x as f64).sum::<f64>() / v.len().max(1) as f64
                }
            })
            .collect();
        let series: Vec<(&str, &str, Vec<f64>)> = vec![
            ("score", ACCENT, es.iter().map(|e| e.score).collect()),
            ("predicted dF/F, goal", PREDICTED, own),
            (
                "predicted dF/F, other neurons",
                SHUFFLED,
                es.iter().map(|e| e.rest_mean as f64).collect(),
            ),
        ];
        let y = svg::extent(series.iter().flat_map(|s| s.2.iter().copied()).chain([0.0]))
            .unwrap_or((0.0, 1.0));
        let n = es.len() as f64;
        let cats: Vec<String> = es
            .iter()
            .map(|e| format!("#{} {}", e.rank, e.family))
            .collect();
        let mut c = Chart::new(
            (300.0 + 90.0 * n).min(1280.0),
            280.0,
            (-0.5, n - 0.5),
            (y.0.min(0.0), y.1 * 1.2),
        );
        c.grouped_bars(&series);
        b.figure(
            &format!("scores-{goal}"),
            &c.finish_with_x_labels("entry (rank, family)", "score / dF/F", Some(&cats)),
            &format!(
                "{}: the objective's score of each ranked stimulus, the twin's predicted mean dF/F of the goal and of the other neurons.",
                goal_name(goal)
            ),
        );
    }
    Section::present("scores", "Scores", b)
}

fn stimuli_section(path: &Path, plan: &Plan) -> Result<Section, ReportError> {
    let (h, w, t) = (plan.height, plan.width, plan.frames.max(1));
    let per = h * w;
    let mut b = Body::default();
    b.note("Frames are 8-bit linear luminance as stored (the display applies its gamma).");
    for goal in goals(plan) {
        let mut es: Vec<_> = plan.for_goal(goal).collect();
        es.sort_by_key(|e| e.rank);
        let mut rows = Vec::new();
        for e in es.iter().take(MAX_PER_GOAL) {
            let mut cells = String::new();
            if e.frames.len() >= t * per && per > 0 {
                for k in 0..4.min(t) {
                    let f = k * (t - 1) / 3;
                    cells.push_str(
                        &image::frame_img(
                            &e.frames[f * per..(f + 1) * per],
                            w,
                            h,
                            110.0,
                            &format!("{} #{} frame {f}", goal_name(goal), e.rank),
                        )
                        .map_err(|message| ReportError::Invalid {
                            path: path.to_path_buf(),
                            message: format!("cannot encode a stimulus frame: {message}"),
                        })?,
                    );
                }
            }
            rows.push(vec![
                e.rank.to_string(),
                e.family.clone(),
                e.param_names
                    .iter()
                    .zip(&e.params)
                    .map(|(k, v)| format!("{k} {v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{:?} {}", e.stage, e.index),
                format!("{:.4}", e.score),
                e.target_response
                    .iter()
                    .map(|v| format!("{v:.3}"))
                    .collect::<Vec<_>>()
                    .join(", "),
                format!("{:.3}", e.rest_mean),
                cells,
            ]);
        }
        let mut table = Body::default();
        table.table(
            &[
                "rank",
                "family",
                "parameters",
                "found by",
                "score",
                "predicted dF/F of targets",
                "rest",
                "frames (start to end)",
            ],
            &rows,
        );
        b.figure(
            &format!("stimuli-{goal}"),
            &table.html,
            &format!(
                "{}: ranked stimuli, four frames of each from start to end; predicted dF/F of the plan's targets {:?} and the mean of the other neurons (rest).",
                goal_name(goal),
                plan.targets
            ),
        );
        if es.len() > MAX_PER_GOAL {
            b.note(&format!(
                "{} more entries not drawn.",
                es.len() - MAX_PER_GOAL
            ));
        }
    }
    Ok(Section::present("stimuli", "Stimuli", b))
}
