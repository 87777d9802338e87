use std::path::PathBuf;

use anyhow::{Context, Result};

#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  rig status --addr 127.0.0.1:7878\n  rig status --addr 127.0.0.1:7878 --objective neuron --targets 65,177\n  rig status --addr 127.0.0.1:7878 --stop"
)]
pub struct Args {
    /// Address of the daemon's control endpoint (default: control.listen of the config).
    #[arg(long)]
    addr: Option<String>,
    /// Rig config whose control.listen to use.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Hold the closed loop (the display shows gray; recording goes on).
    #[arg(long, conflicts_with_all = ["resume", "stop"])]
    pause: bool,
    /// Resume the closed loop.
    #[arg(long, conflicts_with = "stop")]
    resume: bool,
    /// Stop the session cleanly (flush and close the file).
    #[arg(long)]
    stop: bool,
    /// Set the objective of the in-silico search (neuron, group, selectivity, group-selectivity,
    /// explore); the daemon refuses one its twin cannot search.
    #[arg(long, conflicts_with_all = ["pause", "resume", "stop"])]
    objective: Option<String>,
    /// Target neurons for --objective: ROI ids of the twin's neurons, comma separated.
    #[arg(long, value_delimiter = ',', requires = "objective")]
    targets: Vec<u32>,
    /// Print the reply as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run(a: Args) -> Result<()> {
    let addr = match a.addr {
        Some(x) => x,
        None => super::load_config(a.config.as_deref())?.control.listen,
    };
    let req = if a.pause {
        serde_json::json!({"cmd": "pause"})
    } else if a.resume {
        serde_json::json!({"cmd": "resume"})
    } else if a.stop {
        serde_json::json!({"cmd": "stop"})
    } else if let Some(o) = &a.objective {
        serde_json::json!({"cmd": "set_objective", "objective": o, "targets": a.targets})
    } else {
        serde_json::json!({"cmd": "status"})
    };
    let reply = twinrig::control::request(&addr, &req)
        .with_context(|| format!("no rig daemon answering on {addr}"))?;
    let refused = || {
        anyhow::anyhow!(
            "daemon refused: {}",
            reply["error"].as_str().unwrap_or("(no reason given)")
        )
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&reply)?);
        // The reply is printed either way; the exit code still says it was refused.
        if reply["ok"] != true {
            return Err(refused());
        }
    } else if reply["ok"] != true {
        return Err(refused());
    } else if let Some(state) = reply
        .get("state")
        .and_then(|s| s.as_str())
        .filter(|_| reply.get("frames_in").is_some())
    {
        println!(
            "{state}: {} ({:.1} s), frames {} in / {} analysed / {} recorded{}",
            reply["session"].as_str().unwrap_or("?"),
            reply["elapsed_s"].as_f64().unwrap_or(0.0),
            reply["frames_in"],
            reply["frames_analysed"],
            reply["frames_recorded"],
            if reply["paused"] == true {
                ", loop paused"
            } else {
                ""
            }
        );
        if reply["twin_frames"].as_u64().unwrap_or(0) > 0 {
            println!(
                "twin: {} frames, population fidelity {}{}",
                reply["twin_frames"],
                reply["twin_fidelity"]
                    .as_f64()
                    .map(|f| format!("{f:.3}"))
                    .unwrap_or_else(|| "(window filling)".into()),
                if reply["twin_alarm"] == true {
                    " -- ALARM: the twin no longer predicts this field of view"
                } else {
                    ""
                }
            );
        }
    } else if let Some(o) = reply.get("objective").filter(|_| a.objective.is_some()) {
        let targets: Vec<String> = o["targets"]
            .as_array()
            .map(|t| t.iter().map(|v| v.to_string()).collect())
            .unwrap_or_default();
        println!(
            "objective set: {} (targets: {}); the in-silico search starts over",
            o["objective"].as_str().unwrap_or("?"),
            if targets.is_empty() {
                "none".to_string()
            } else {
                targets.join(", ")
            }
        );
    } else if a.pause || a.resume {
        println!(
            "{addr}: closed loop {}",
            if reply["paused"] == true {
                "paused (the display shows gray; recording goes on)"
            } else {
                "resumed"
            }
        );
    } else if a.stop {
        println!("{addr}: stopping (the session file is flushed and closed)");
    } else {
        // A reply this version does not know how to word: show it whole rather than drop it.
        println!("{addr}: {reply}");
    }
    Ok(())
}
