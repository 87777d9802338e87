use std::path::{Path, PathBuf};

use anyhow::Result;
use serde::Serialize;
use twinrig::closedloop::gain::{session_plan, SessionPlan};
use twinrig::insilico::Plan;
use twinrig::session::{SessionError, SessionMeta, SessionReader};
use twinrig::stats::{bucket_percentile, median};

#[derive(clap::Args)]
#[command(after_help = "Examples:
  rig inspect out/demo/closed_loop.h5
  rig inspect out/demo/plan.h5 --json")]
pub struct Args {
    /// Session file (HDF5), or an in-silico plan (rig insilico --out).
    session: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
pub struct Report {
    pub path: String,
    #[serde(flatten)]
    pub meta: SessionMeta,
    pub duration_s: f64,
    pub behavior_samples: usize,
    pub mean_running_speed_cm_s: f64,
    pub trials: usize,
    pub flips: usize,
    pub photodiode_edges: usize,
    pub frame_clock_edges: usize,
    pub encoder_samples: usize,
    pub ground_truth: bool,
    /// Extracted traces (traces/), when the session has them.
    pub traces: Option<TracesSummary>,
    /// What the twin did in the loop (twin/), when it ran.
    pub twin: Option<TwinSummary>,
    /// The in-silico plan the session ran (root attribute `plan`).
    pub plan: Option<SessionPlan>,
    /// Latency per pipeline stage (latency/), written when a run or replay ends.
    pub latency: Vec<StageSummary>,
}

#[derive(Serialize)]
pub struct TracesSummary {
    pub rois: usize,
    pub analysed_frames: usize,
    pub skipped_frames: usize,
    pub spike_rows: usize,
    /// Median over ROIs of each ROI's mean dF/F.
    pub median_mean_dff: Option<f64>,
}

#[derive(Serialize)]
pub struct TwinSummary {
    pub model: Option<String>,
    pub device: Option<String>,
    pub neurons: usize,
    pub frames: usize,
    pub frames_skipped: Option<u64>,
    pub trials: usize,
    pub median_session_corr: Option<f64>,
    pub neurons_with_corr: usize,
    pub reference_fidelity: Option<f64>,
    pub last_population_fidelity: Option<f64>,
    pub alarms: Option<u64>,
}

#[derive(Serialize)]
pub struct StageSummary {
    pub stage: String,
    pub count: u64,
    pub p50_us: Option<u64>,
    pub p99_us: Option<u64>,
}

/// What a plan file holds (`rig inspect PLAN.h5`).
#[derive(Serialize)]
pub struct PlanSummary {
    pub path: String,
    pub kind: &'static str,
    pub twin: String,
    pub objective: String,
    pub targets: Vec<u32>,
    pub evaluations: u64,
    pub budget: u64,
    pub elapsed_s: f64,
    pub stopped_early: bool,
    pub stimulus: String,
    pub goals: Vec<GoalSummary>,
}

#[derive(Serialize)]
pub struct GoalSummary {
    /// ROI id, -1 for a group goal.
    pub goal: i64,
    pub entries: usize,
    pub best_family: String,
    pub best_score: f64,
    /// The twin's predicted mean dF/F of the plan's targets to the best entry.
    pub best_target_response: Vec<f32>,
}

pub fn report(path: &Path) -> Result<Report> {
    let r = SessionReader::open(path)?;
    let t = r.frame_times()?;
    let b = r.behavior()?;
    let gt = r.ground_truth()?;
    let mean_speed = if b.running_speed.is_empty() {
        0.0
    } else {
        b.running_speed.iter().map(|&v| v as f64).sum::<f64>() / b.running_speed.len() as f64
    };
    Ok(Report {
        path: path.display().to_string(),
        meta: r.meta().clone(),
        duration_s: match (t.first(), t.last()) {
            (Some(a), Some(z)) => z - a + 1.0 / r.meta().frame_rate_hz,
            _ => 0.0,
        },
        behavior_samples: b.time.len(),
        mean_running_speed_cm_s: mean_speed,
        trials: r.trials()?.start.len(),
        flips: r.flips()?.time.len(),
        photodiode_edges: r.photodiode()?.0.len(),
        frame_clock_edges: r.frame_clock()?.0.len(),
        encoder_samples: r.encoder()?.0.len(),
        ground_truth: gt.is_some(),
        traces: r.traces()?.map(|t| {
            let rows = t.frame_index.len();
            let means: Vec<f64> = (0..t.n_rois)
                .map(|c| {
                    (0..rows)
                        .map(|i| t.dff[i * t.n_rois + c] as f64)
                        .sum::<f64>()
                        / rows.max(1) as f64
                })
                .collect();
            TracesSummary {
                rois: t.n_rois,
                analysed_frames: rows,
                skipped_frames: r.meta().n_frames.saturating_sub(rows),
                spike_rows: t.spikes_frame.len(),
                median_mean_dff: median(&means),
            }
        }),
        twin: r.twin()?.map(|t| {
            let corr: Vec<f64> = t
                .session_corr
                .iter()
                .flatten()
                .map(|&v| v as f64)
                .filter(|v| v.is_finite())
                .collect();
            TwinSummary {
                model: t.model.clone(),
                device: t.device.clone(),
                neurons: t.neurons(),
                frames: t.rows(),
                frames_skipped: t.frames_skipped,
                trials: t.trials(),
                median_session_corr: median(&corr),
                neurons_with_corr: corr.len(),
                reference_fidelity: t.reference_fidelity,
                last_population_fidelity: t
                    .population_fidelity
                    .iter()
                    .rev()
                    .copied()
                    .find(|v| v.is_finite()),
                alarms: t.alarms,
            }
        }),
        plan: session_plan(&r)?,
        latency: r
            .latency()?
            .into_iter()
            .map(|s| StageSummary {
                count: s.count.iter().sum(),
                p50_us: bucket_percentile(&s.value_us, &s.count, 0.5),
                p99_us: bucket_percentile(&s.value_us, &s.count, 0.99),
                stage: s.stage,
            })
            .collect(),
    })
}

pub fn plan_summary(path: &Path) -> Result<PlanSummary> {
    let p = Plan::read(path)?;
    let mut goals: Vec<GoalSummary> = Vec::new();
    for e in &p.entries {
        match goals.iter_mut().find(|g| g.goal == e.goal) {
            Some(g) => {
                g.entries += 1;
                if e.score > g.best_score {
                    g.best_score = e.score;
                    g.best_family = e.family.clone();
                    g.best_target_response = e.target_response.clone();
                }
            }
            None => goals.push(GoalSummary {
                goal: e.goal,
                entries: 1,
                best_family: e.family.clone(),
                best_score: e.score,
                best_target_response: e.target_response.clone(),
            }),
        }
    }
    Ok(PlanSummary {
        path: path.display().to_string(),
        kind: "plan",
        twin: p.twin.clone(),
        objective: p.objective.clone(),
        targets: p.targets.clone(),
        evaluations: p.evaluations,
        budget: p.budget,
        elapsed_s: p.elapsed_s,
        stopped_early: p.stopped_early,
        stimulus: format!(
            "{} frames of {}x{} at {} Hz",
            p.frames, p.width, p.height, p.frame_rate_hz
        ),
        goals,
    })
}

pub fn print_plan(s: &PlanSummary) {
    println!(
        "plan {} ({} for targets {:?})",
        s.path, s.objective, s.targets
    );
    println!(
        "  twin {}; {} of {} evaluations in {:.1} s{}",
        s.twin,
        s.evaluations,
        s.budget,
        s.elapsed_s,
        if s.stopped_early {
            " (stopped early by its time limit)"
        } else {
            ""
        }
    );
    println!("  stimuli: {}", s.stimulus);
    for g in &s.goals {
        println!(
            "  goal {}: {} entries, best {} score {:.3}, predicted targets [{}]",
            if g.goal < 0 {
                "group".to_string()
            } else {
                format!("ROI {}", g.goal)
            },
            g.entries,
            g.best_family,
            g.best_score,
            g.best_target_response
                .iter()
                .map(|v| format!("{v:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
}

fn opt(v: Option<f64>) -> String {
    v.map_or("-".into(), |x| format!("{x:.3}"))
}

pub fn print(r: &Report) {
    let m = &r.meta;
    println!(
        "session {} ({})",
        r.path,
        if m.complete {
            "complete"
        } else {
            "INCOMPLETE: writer did not finish"
        }
    );
    println!(
        "  format v{}, written by twinrig {}, mouse {}, session {}, started {}",
        m.format_version, m.software_version, m.mouse_id, m.session_id, m.start_time
    );
    println!(
        "  imaging: {} frames of {}x{} u16 at {} Hz ({:.1} s)",
        m.n_frames, m.height, m.width, m.frame_rate_hz, r.duration_s
    );
    println!(
        "  stimulus: {} clips of {} frames at {}x{}, {} trials, {} flips at {} Hz",
        m.n_clips,
        m.frames_per_clip,
        m.stimulus_width,
        m.stimulus_height,
        r.trials,
        r.flips,
        m.refresh_hz
    );
    println!(
        "  behaviour: {} samples, mean running speed {:.1} cm/s",
        r.behavior_samples, r.mean_running_speed_cm_s
    );
    println!(
        "  sync board: {} frame clock edges, {} photodiode edges, {} encoder samples",
        r.frame_clock_edges, r.photodiode_edges, r.encoder_samples
    );
    println!(
        "  ROIs: {}; ground truth: {}",
        m.n_rois,
        match m.n_neurons {
            Some(n) if r.ground_truth =>
                format!("{n} neurons (spikes, calcium, motion, parameters)"),
            _ => "none".into(),
        }
    );
    match &r.traces {
        Some(t) => println!(
            "  traces: {} ROIs over {} analysed frames ({} skipped), {} deconvolved rows; median mean dF/F {}",
            t.rois,
            t.analysed_frames,
            t.skipped_frames,
            t.spike_rows,
            opt(t.median_mean_dff)
        ),
        None => println!("  traces: none"),
    }
    match &r.twin {
        Some(t) => {
            println!(
                "  twin: {} on {}, {} neurons over {} frames ({} skipped), {} trials compared",
                t.model.as_deref().unwrap_or("?"),
                t.device.as_deref().unwrap_or("?"),
                t.neurons,
                t.frames,
                t.frames_skipped.map_or("?".into(), |v| v.to_string()),
                t.trials
            );
            println!(
                "  twin fidelity: median session corr {} ({} neurons defined), reference window {}, last window {}, {} alarms",
                opt(t.median_session_corr),
                t.neurons_with_corr,
                opt(t.reference_fidelity),
                opt(t.last_population_fidelity),
                t.alarms.map_or("?".into(), |v| v.to_string())
            );
        }
        None => println!("  twin: not in the loop"),
    }
    match &r.plan {
        Some(p) => println!(
            "  plan: {} ({} for targets {:?}), {} stimuli as clips {:?}",
            p.path,
            p.objective,
            p.targets,
            p.stimuli.len(),
            p.stimuli.iter().map(|s| s.clip).collect::<Vec<_>>()
        ),
        None => println!("  plan: none"),
    }
    if !r.latency.is_empty() {
        let stages: Vec<String> = r
            .latency
            .iter()
            .map(|s| {
                format!(
                    "{} {}/{}",
                    s.stage,
                    s.p50_us.map_or("-".into(), |v| v.to_string()),
                    s.p99_us.map_or("-".into(), |v| v.to_string())
                )
            })
            .collect();
        println!("  latency p50/p99 (us): {}", stages.join(", "));
    }
}

pub fn run(a: Args) -> Result<()> {
    let rep = match report(&a.session) {
        Ok(rep) => rep,
        Err(e) => {
            // A plan is an HDF5 file of another format: summarise it instead.
            let is_plan = matches!(
                e.downcast_ref::<SessionError>(),
                Some(SessionError::NotSession { found, .. })
                    if found == twinrig::insilico::plan::FORMAT_NAME
            );
            if !is_plan {
                return Err(e);
            }
            let s = plan_summary(&a.session)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_plan(&s);
            }
            return Ok(());
        }
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rep)?);
    } else {
        print(&rep);
    }
    Ok(())
}
