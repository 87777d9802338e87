//! The ranked plan: what `rig insilico` writes and `rig run` presents. HDF5 (docs/insilico.md has
//! the layout); `Plan::read` validates every field up front and names the file, the field and what
//! was expected, so a damaged or foreign file is refused before anything is shown to a mouse.

use std::path::Path;

use hdf5::types::VarLenUnicode;
use hdf5::{File, H5Type};
use serde::Serialize;

use super::shard::Shard;
use super::{InsilicoError, SearchOptions};

pub const FORMAT_NAME: &str = "twinrig-insilico-plan";
pub const FORMAT_VERSION: u32 = 1;

/// Where an entry came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Screened from a library or a random draw of a family.
    Screen = 0,
    /// Found by CMA-ES.
    Optimise = 1,
    /// (plan level) a final plan, as opposed to a shard's screen or an optimiser part.
    Final = 2,
}

impl Stage {
    fn from_u8(v: u8) -> Option<Stage> {
        match v {
            0 => Some(Stage::Screen),
            1 => Some(Stage::Optimise),
            2 => Some(Stage::Final),
            _ => None,
        }
    }
}

/// One ranked stimulus.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Rank within its goal, 0 = best.
    pub rank: u32,
    /// ROI id of the target it was optimised for, or -1 for a group goal.
    pub goal: i64,
    pub family: String,
    pub param_names: Vec<String>,
    pub params: Vec<f64>,
    pub stage: Stage,
    /// Candidate index within its stage: screen, the global screening index; optimise,
    /// run << 32 | k for the k-th candidate of CMA-ES run `run` (runs numbered goal by goal).
    pub index: u64,
    /// The objective's score (predicted dF/F above the gray-screen response; see objective.rs).
    pub score: f64,
    /// Predicted mean dF/F of each plan target (the plan's `targets` order) over the clip.
    pub target_response: Vec<f32>,
    /// Predicted mean dF/F over the clip, averaged over the twin's neurons that are not targets.
    pub rest_mean: f32,
    /// Predicted mean dF/F of every twin neuron (`roi_ids` order).
    #[serde(skip)]
    pub response: Vec<f32>,
    /// Rendered frames [T, H, W], 8-bit luminance (127.5 = mean gray), as in `stimulus/clips`.
    #[serde(skip)]
    pub frames: Vec<u8>,
}

impl Entry {
    /// Parameters as a JSON object (name -> value).
    pub fn params_json(&self) -> String {
        params_json(&self.param_names, &self.params)
    }
}

/// Named parameters as a JSON object, `{"orientation_deg": 45.0, ...}`.
pub fn params_json(names: &[String], params: &[f64]) -> String {
    let m: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(params)
        .map(|(k, v)| (k.clone(), serde_json::json!(v)))
        .collect();
    serde_json::Value::Object(m).to_string()
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    pub format_version: u32,
    pub twin: String,
    /// FNV-1a 64 of the twin file: merge and evaluate check they use the same model.
    pub twin_digest: String,
    pub objective: String,
    pub targets: Vec<u32>,
    pub seed: u64,
    pub budget: u64,
    /// Twin evaluations spent (screen + optimiser).
    pub evaluations: u64,
    /// `Final` for a plan; `Screen` for one shard's screening survivors; `Optimise` for one part
    /// of the optimiser stage (`rig insilico optimise --part K/M`), whose `shard` is K/M.
    pub stage: Stage,
    pub shard: Option<Shard>,
    /// The time limit stopped the search before the budget was spent.
    pub stopped_early: bool,
    pub elapsed_s: f64,
    pub frame_rate_hz: f64,
    pub height: usize,
    pub width: usize,
    /// Frames per stimulus (T).
    pub frames: usize,
    /// The twin's ROI ids (columns of `response`).
    pub roi_ids: Vec<u32>,
    /// Predicted mean dF/F of every neuron to the gray screen (each score's zero).
    pub baseline: Vec<f32>,
    /// The SearchOptions, JSON.
    pub options_json: String,
    pub software_version: String,
    pub entries: Vec<Entry>,
}

/// FNV-1a 64 of a file's bytes, as 16 hex digits.
pub fn file_digest(path: &Path) -> Result<String, InsilicoError> {
    let bytes = std::fs::read(path).map_err(|e| InsilicoError::File {
        path: path.into(),
        message: format!("cannot read: {e}"),
    })?;
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    Ok(format!("{h:016x}"))
}

fn h5err(path: &Path, field: &str, e: impl std::fmt::Display) -> InsilicoError {
    InsilicoError::File {
        path: path.into(),
        message: format!(
            "HDF5 at `{field}`: {}",
            e.to_string().lines().next().unwrap_or("")
        ),
    }
}

fn vstr(path: &Path, field: &str, s: &str) -> Result<VarLenUnicode, InsilicoError> {
    s.parse::<VarLenUnicode>()
        .map_err(|e| h5err(path, field, format!("string not storable: {e}")))
}

impl Plan {
    /// Keeps only the goals of `keep` (a subset of the plan's targets, in the order given) and
    /// the group goals: the plan a search for just those targets would have listed, with each
    /// entry's target responses and rest mean re-read from its full response where it has one.
    /// Used to search many candidate targets at once and show the most promising.
    pub fn restrict_targets(&mut self, keep: &[u32]) -> Result<(), InsilicoError> {
        let pos: Vec<usize> = keep
            .iter()
            .map(|t| {
                self.targets.iter().position(|x| x == t).ok_or_else(|| {
                    InsilicoError::input(format!(
                        "restrict: ROI {t} is not one of the plan's targets {:?}",
                        self.targets
                    ))
                })
            })
            .collect::<Result<_, _>>()?;
        self.entries
            .retain(|e| e.goal < 0 || keep.iter().any(|&t| t as i64 == e.goal));
        let rest: Vec<usize> = (0..self.roi_ids.len())
            .filter(|&i| !keep.contains(&self.roi_ids[i]))
            .collect();
        for e in &mut self.entries {
            e.target_response = pos
                .iter()
                .map(|&i| e.target_response.get(i).copied().unwrap_or(f32::NAN))
                .collect();
            if e.response.len() == self.roi_ids.len() && !rest.is_empty() {
                e.rest_mean = rest.iter().map(|&i| e.response[i]).sum::<f32>() / rest.len() as f32;
            }
        }
        self.targets = keep.to_vec();
        if let Ok(mut o) = serde_json::from_str::<serde_json::Value>(&self.options_json) {
            o["targets"] = serde_json::json!(keep);
            self.options_json = o.to_string();
        }
        Ok(())
    }

    /// The search options this plan was made with.
    pub fn options(&self) -> Result<SearchOptions, InsilicoError> {
        serde_json::from_str(&self.options_json).map_err(|e| InsilicoError::Field {
            path: "plan".into(),
            field: "options".into(),
            expected: "the JSON of SearchOptions".into(),
            found: e.to_string(),
        })
    }

    /// Entries made for `goal` (a target's ROI id, or -1), best first.
    pub fn for_goal(&self, goal: i64) -> impl Iterator<Item = &Entry> {
        self.entries.iter().filter(move |e| e.goal == goal)
    }

    pub fn write(&self, path: &Path) -> Result<(), InsilicoError> {
        let f = File::create(path).map_err(|e| InsilicoError::File {
            path: path.into(),
            message: format!(
                "cannot create: {}",
                e.to_string().lines().next().unwrap_or("")
            ),
        })?;
        let p = path;
        let sattr = |name: &str, v: &str| -> Result<(), InsilicoError> {
            let v = vstr(p, name, v)?;
            f.new_attr::<VarLenUnicode>()
                .create(name)
                .and_then(|a| a.write_scalar(&v))
                .map_err(|e| h5err(p, name, e))
        };
        sattr("format", FORMAT_NAME)?;
        sattr("twin", &self.twin)?;
        sattr("twin_digest", &self.twin_digest)?;
        sattr("objective", &self.objective)?;
        sattr("options", &self.options_json)?;
        sattr("software_version", &self.software_version)?;
        sattr(
            "stage",
            match self.stage {
                Stage::Final => "final",
                Stage::Optimise => "optimise",
                Stage::Screen => "screen",
            },
        )?;
        sattr(
            "shard",
            &self
                .shard
                .map_or_else(String::new, |s| format!("{}/{}", s.index, s.count)),
        )?;
        fn nattr<T: H5Type>(f: &File, p: &Path, name: &str, v: T) -> Result<(), InsilicoError> {
            f.new_attr::<T>()
                .create(name)
                .and_then(|a| a.write_scalar(&v))
                .map_err(|e| h5err(p, name, e))
        }
        nattr(&f, p, "format_version", self.format_version)?;
        nattr(&f, p, "seed", self.seed)?;
        nattr(&f, p, "budget", self.budget)?;
        nattr(&f, p, "evaluations", self.evaluations)?;
        nattr(&f, p, "stopped_early", self.stopped_early as u8)?;
        nattr(&f, p, "elapsed_s", self.elapsed_s)?;
        nattr(&f, p, "frame_rate_hz", self.frame_rate_hz)?;
        nattr(&f, p, "height", self.height as u32)?;
        nattr(&f, p, "width", self.width as u32)?;
        nattr(&f, p, "frames", self.frames as u32)?;

        let e_n = self.entries.len();
        let (t, h, w) = (self.frames, self.height, self.width);
        let (k, n) = (self.targets.len(), self.roi_ids.len());
        let pmax = self
            .entries
            .iter()
            .map(|e| e.params.len())
            .max()
            .unwrap_or(0);
        ds(&f, p, "targets", &self.targets)?;
        ds(&f, p, "roi_ids", &self.roi_ids)?;
        ds(&f, p, "baseline", &self.baseline)?;
        f.create_group("entries")
            .map_err(|e| h5err(p, "entries", e))?;
        let col = |g: &dyn Fn(&Entry) -> f64| self.entries.iter().map(g).collect::<Vec<f64>>();
        ds(
            &f,
            p,
            "entries/rank",
            &self.entries.iter().map(|e| e.rank).collect::<Vec<_>>(),
        )?;
        ds(
            &f,
            p,
            "entries/goal",
            &self.entries.iter().map(|e| e.goal).collect::<Vec<_>>(),
        )?;
        ds(
            &f,
            p,
            "entries/stage",
            &self
                .entries
                .iter()
                .map(|e| e.stage as u8)
                .collect::<Vec<_>>(),
        )?;
        ds(
            &f,
            p,
            "entries/index",
            &self.entries.iter().map(|e| e.index).collect::<Vec<_>>(),
        )?;
        ds(&f, p, "entries/score", &col(&|e| e.score))?;
        ds(
            &f,
            p,
            "entries/rest_mean",
            &self.entries.iter().map(|e| e.rest_mean).collect::<Vec<_>>(),
        )?;
        let strs = |name: &str, g: &dyn Fn(&Entry) -> String| -> Result<(), InsilicoError> {
            let v: Vec<VarLenUnicode> = self
                .entries
                .iter()
                .map(|e| vstr(p, name, &g(e)))
                .collect::<Result<_, _>>()?;
            ds(&f, p, name, &v)
        };
        strs("entries/family", &|e| e.family.clone())?;
        strs("entries/param_names", &|e| e.param_names.join(","))?;
        strs("entries/params_json", &|e| e.params_json())?;
        let mut params = vec![f64::NAN; e_n * pmax];
        for (i, e) in self.entries.iter().enumerate() {
            params[i * pmax..i * pmax + e.params.len()].copy_from_slice(&e.params);
        }
        ds_nd(&f, p, "entries/params", &params, &[e_n, pmax])?;
        let flat = |g: &dyn Fn(&Entry) -> &[f32]| -> Vec<f32> {
            self.entries
                .iter()
                .flat_map(|e| g(e).iter().copied())
                .collect()
        };
        ds_nd(
            &f,
            p,
            "entries/target_response",
            &flat(&|e| &e.target_response),
            &[e_n, k],
        )?;
        ds_nd(
            &f,
            p,
            "entries/response",
            &flat(&|e| &e.response),
            &[e_n, n],
        )?;
        let frames: Vec<u8> = self
            .entries
            .iter()
            .flat_map(|e| e.frames.iter().copied())
            .collect();
        ds_nd(&f, p, "entries/frames", &frames, &[e_n, t, h, w])?;
        f.flush().map_err(|e| h5err(p, "flush", e))?;
        Ok(())
    }

    /// Reads and validates a plan written by `write`.
    pub fn read(path: &Path) -> Result<Plan, InsilicoError> {
        let p = path;
        if !path.exists() {
            return Err(InsilicoError::File {
                path: path.into(),
                message: "no such file".into(),
            });
        }
        let f = File::open(path).map_err(|e| InsilicoError::File {
            path: path.into(),
            message: format!(
                "not a readable HDF5 file: {}",
                e.to_string().lines().next().unwrap_or("")
            ),
        })?;
        let bad = |field: &str, expected: String, found: String| InsilicoError::Field {
            path: path.into(),
            field: field.into(),
            expected,
            found,
        };
        let sattr = |name: &str| -> Result<String, InsilicoError> {
            f.attr(name)
                .and_then(|a| a.read_scalar::<VarLenUnicode>())
                .map(|v| v.as_str().to_string())
                .map_err(|_| bad(name, "a string attribute".into(), "none".into()))
        };
        let format = sattr("format").unwrap_or_default();
        if format != FORMAT_NAME {
            return Err(bad(
                "format",
                format!("{FORMAT_NAME:?} (an in-silico plan from rig insilico)"),
                format!("{format:?}"),
            ));
        }
        fn nattr<T: H5Type>(f: &File, p: &Path, name: &str) -> Result<T, InsilicoError> {
            f.attr(name)
                .and_then(|a| a.read_scalar::<T>())
                .map_err(|_| InsilicoError::Field {
                    path: p.into(),
                    field: name.into(),
                    expected: format!("a numeric attribute ({})", std::any::type_name::<T>()),
                    found: "none or another type".into(),
                })
        }
        let version: u32 = nattr(&f, p, "format_version")?;
        if version == 0 || version > FORMAT_VERSION {
            return Err(bad(
                "format_version",
                format!("1..={FORMAT_VERSION}"),
                version.to_string(),
            ));
        }
        let stage = match sattr("stage")?.as_str() {
            "final" => Stage::Final,
            "screen" => Stage::Screen,
            "optimise" => Stage::Optimise,
            o => {
                return Err(bad(
                    "stage",
                    "\"final\", \"screen\" or \"optimise\"".into(),
                    format!("{o:?}"),
                ))
            }
        };
        let shard_s = sattr("shard")?;
        let shard = if shard_s.is_empty() {
            None
        } else {
            Some(Shard::parse(&shard_s).map_err(|e| bad("shard", "K/N".into(), e.to_string()))?)
        };
        let height = nattr::<u32>(&f, p, "height")? as usize;
        let width = nattr::<u32>(&f, p, "width")? as usize;
        let frames = nattr::<u32>(&f, p, "frames")? as usize;
        let targets: Vec<u32> = rd(&f, p, "targets", None)?.0;
        let roi_ids: Vec<u32> = rd(&f, p, "roi_ids", None)?.0;
        let n = roi_ids.len();
        let baseline: Vec<f32> = rd(&f, p, "baseline", Some(&[n]))?.0;
        let (rank, sh) = rd::<u32>(&f, p, "entries/rank", None)?;
        let e_n = sh[0];
        let goal: Vec<i64> = rd(&f, p, "entries/goal", Some(&[e_n]))?.0;
        let stage_v: Vec<u8> = rd(&f, p, "entries/stage", Some(&[e_n]))?.0;
        let index: Vec<u64> = rd(&f, p, "entries/index", Some(&[e_n]))?.0;
        let score: Vec<f64> = rd(&f, p, "entries/score", Some(&[e_n]))?.0;
        let rest_mean: Vec<f32> = rd(&f, p, "entries/rest_mean", Some(&[e_n]))?.0;
        let family: Vec<VarLenUnicode> = rd(&f, p, "entries/family", Some(&[e_n]))?.0;
        let names: Vec<VarLenUnicode> = rd(&f, p, "entries/param_names", Some(&[e_n]))?.0;
        let (params, psh) = rd::<f64>(&f, p, "entries/params", None)?;
        if psh.len() != 2 || psh[0] != e_n {
            return Err(bad(
                "entries/params",
                format!("shape [{e_n}, P]"),
                format!("{psh:?}"),
            ));
        }
        let pmax = psh[1];
        let k = targets.len();
        let tr: Vec<f32> = rd(&f, p, "entries/target_response", Some(&[e_n, k]))?.0;
        let resp: Vec<f32> = rd(&f, p, "entries/response", Some(&[e_n, n]))?.0;
        let fr: Vec<u8> = rd(&f, p, "entries/frames", Some(&[e_n, frames, height, width]))?.0;
        let clip = frames * height * width;
        let mut entries = Vec::with_capacity(e_n);
        for i in 0..e_n {
            let fam = family[i].as_str().to_string();
            if !super::family::FAMILIES.contains(&fam.as_str()) {
                return Err(bad(
                    &format!("entries/family[{i}]"),
                    format!("one of {}", super::family::FAMILIES.join(", ")),
                    format!("{fam:?}"),
                ));
            }
            let pn: Vec<String> = if names[i].as_str().is_empty() {
                Vec::new()
            } else {
                names[i].as_str().split(',').map(String::from).collect()
            };
            if pn.len() > pmax {
                return Err(bad(
                    &format!("entries/param_names[{i}]"),
                    format!("at most {pmax} names (entries/params has {pmax} columns)"),
                    pn.len().to_string(),
                ));
            }
            let pv = params[i * pmax..i * pmax + pn.len()].to_vec();
            if pv.iter().any(|v| !v.is_finite()) {
                return Err(bad(
                    &format!("entries/params[{i}]"),
                    "finite values".into(),
                    format!("{pv:?}"),
                ));
            }
            let st = Stage::from_u8(stage_v[i])
                .filter(|s| *s != Stage::Final)
                .ok_or_else(|| {
                    bad(
                        &format!("entries/stage[{i}]"),
                        "0 (screen) or 1 (optimise)".into(),
                        stage_v[i].to_string(),
                    )
                })?;
            entries.push(Entry {
                rank: rank[i],
                goal: goal[i],
                family: fam,
                param_names: pn,
                params: pv,
                stage: st,
                index: index[i],
                score: score[i],
                target_response: tr[i * k..(i + 1) * k].to_vec(),
                rest_mean: rest_mean[i],
                response: resp[i * n..(i + 1) * n].to_vec(),
                frames: fr[i * clip..(i + 1) * clip].to_vec(),
            });
        }
        Ok(Plan {
            format_version: version,
            twin: sattr("twin")?,
            twin_digest: sattr("twin_digest")?,
            objective: sattr("objective")?,
            targets,
            seed: nattr(&f, p, "seed")?,
            budget: nattr(&f, p, "budget")?,
            evaluations: nattr(&f, p, "evaluations")?,
            stage,
            shard,
            stopped_early: nattr::<u8>(&f, p, "stopped_early")? != 0,
            elapsed_s: nattr(&f, p, "elapsed_s")?,
            frame_rate_hz: nattr(&f, p, "frame_rate_hz")?,
            height,
            width,
            frames,
            roi_ids,
            baseline,
            options_json: sattr("options")?,
            software_version: sattr("software_version")?,
            entries,
        })
    }
}

fn ds<T: H5Type>(f: &File, p: &Path, name: &str, data: &[T]) -> Result<(), InsilicoError> {
    ds_nd(f, p, name, data, &[data.len()])
}

fn ds_nd<T: H5Type>(
    f: &File,
    p: &Path,
    name: &str,
    data: &[T],
    shape: &[usize],
) -> Result<(), InsilicoError> {
    let arr = ndarray::ArrayViewD::from_shape(ndarray::IxDyn(shape), data)
        .map_err(|e| h5err(p, name, e))?;
    f.new_dataset_builder()
        .with_data(&arr)
        .create(name)
        .map_err(|e| h5err(p, name, e))?;
    Ok(())
}

/// Reads a whole dataset, checking its element type and (when given) shape.
fn rd<T: H5Type>(
    f: &File,
    p: &Path,
    name: &str,
    shape: Option<&[usize]>,
) -> Result<(Vec<T>, Vec<usize>), InsilicoError> {
    let d = f.dataset(name).map_err(|_| InsilicoError::Field {
        path: p.into(),
        field: name.into(),
        expected: "a dataset".into(),
        found: "none".into(),
    })?;
    let sh = d.shape();
    if let Some(want) = shape {
        if sh != want {
            return Err(InsilicoError::Field {
                path: p.into(),
                field: name.into(),
                expected: format!("shape {want:?}"),
                found: format!("{sh:?}"),
            });
        }
    }
    let v = d.read_raw::<T>().map_err(|e| InsilicoError::Field {
        path: p.into(),
        field: name.into(),
        expected: format!("elements of type {}", std::any::type_name::<T>()),
        found: e.to_string().lines().next().unwrap_or("").to_string(),
    })?;
    Ok((v, sh))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(goal: i64, rank: u32, response: Vec<f32>, targets: &[u32]) -> Entry {
        Entry {
            rank,
            goal,
            family: "grating".into(),
            param_names: vec![],
            params: vec![],
            stage: Stage::Screen,
            index: 0,
            score: 0.0,
            target_response: targets.iter().map(|&t| response[t as usize]).collect(),
            rest_mean: 0.0,
            response,
            frames: vec![],
        }
    }

    /// Restricting a plan to some of its targets keeps their goals (and group goals), re-reads
    /// each entry's target responses in the new order and the rest mean over the new non-targets.
    #[test]
    fn restricting_targets_keeps_their_goals_and_rereads_responses() {
        let targets = vec![1u32, 2, 3];
        let resp = |k: f32| vec![0.0, 1.0 + k, 2.0 + k, 3.0 + k];
        let mut p = Plan {
            format_version: FORMAT_VERSION,
            twin: "t.onnx".into(),
            twin_digest: String::new(),
            objective: "neuron".into(),
            targets: targets.clone(),
            seed: 1,
            budget: 10,
            evaluations: 10,
            stage: Stage::Final,
            shard: None,
            stopped_early: false,
            elapsed_s: 0.0,
            frame_rate_hz: 30.0,
            height: 1,
            width: 1,
            frames: 1,
            roi_ids: vec![0, 1, 2, 3],
            baseline: vec![0.0; 4],
            options_json: r#"{"targets":[1,2,3]}"#.into(),
            software_version: String::new(),
            entries: vec![
                entry(1, 0, resp(0.0), &targets),
                entry(2, 0, resp(10.0), &targets),
                entry(3, 0, resp(20.0), &targets),
                entry(-1, 0, resp(30.0), &targets),
            ],
        };
        p.restrict_targets(&[3, 1]).unwrap();
        assert_eq!(p.targets, [3, 1]);
        let goals: Vec<i64> = p.entries.iter().map(|e| e.goal).collect();
        assert_eq!(goals, [1, 3, -1]);
        assert_eq!(p.entries[1].target_response, [23.0, 21.0]);
        // Non-targets now: ROI 0 and ROI 2.
        assert_eq!(p.entries[1].rest_mean, (0.0 + 22.0) / 2.0);
        assert!(p.options_json.contains("[3,1]"), "{}", p.options_json);
        let e = p.restrict_targets(&[7]).unwrap_err().to_string();
        assert!(e.contains("ROI 7 is not one of the plan's targets"), "{e}");
    }
}
