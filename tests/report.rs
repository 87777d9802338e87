//! `rig report` on real files: a closed-loop session with a plan (every section, every figure
//! with data), the plan file itself, a simulated session without twin or traces (absent sections
//! say so), and bad input (one line, no output file). The pages are rendered in headless
//! Chromium: every figure must lay out with a size and every image must decode; screenshots
//! are left in target/report-screenshots/ for a person to look at. `make deps` installs
//! Debian's chromium; without it the test fails and says so, unless TWINRIG_NO_CHROMIUM=1.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const SESSION_SECTIONS: [&str; 9] = [
    "overview",
    "mean-image",
    "traces",
    "fidelity",
    "fidelity-time",
    "trial-averages",
    "plan",
    "latency",
    "display",
];

/// Each `<figure>` of a page: (its `data-figure` key, its HTML).
fn figures(html: &str) -> Vec<(String, String)> {
    html.split("<figure data-figure=\"")
        .skip(1)
        .map(|rest| {
            let key = rest.split('"').next().unwrap().to_string();
            let body = rest.split("</figure>").next().unwrap().to_string();
            (key, body)
        })
        .collect()
}

/// Points in the data paths of a figure (each path's M/L commands).
fn path_points(fig: &str) -> usize {
    fig.split("<path class=\"data\" d=\"")
        .skip(1)
        .map(|p| {
            p.split('"')
                .next()
                .unwrap()
                .matches(['M', 'L', 'h', 'v'])
                .count()
        })
        .sum()
}

/// Checks a report page: self-contained, and every figure drawn with data.
fn check_page(html: &str, summary: &serde_json::Value) -> Vec<(String, String)> {
    assert!(html.starts_with("<!DOCTYPE html>"));
    for external in [
        "http://",
        "https://",
        "src=\"//",
        "href=\"//",
        "<script",
        "<link",
    ] {
        assert!(!html.contains(external), "the page refers to {external}");
    }
    let figs = figures(html);
    assert_eq!(
        figs.len() as u64,
        summary["figures"].as_u64().unwrap(),
        "--json counts the page's figures"
    );
    for (key, body) in &figs {
        let data = body.matches("class=\"data\"").count() + body.matches("<img ").count();
        assert!(data > 0, "figure {key} has no data, only axes: {body:.300}");
        assert!(
            !body.contains("<figcaption></figcaption>"),
            "figure {key} has a caption"
        );
    }
    for s in summary["sections"].as_array().unwrap() {
        let id = s["id"].as_str().unwrap();
        assert!(html.contains(&format!("<section id=\"{id}\">")), "{id}");
        if s["present"] == false {
            let why = s["absent_because"].as_str().unwrap();
            assert!(!why.is_empty() && !why.contains('\n'), "one line: {why}");
        }
    }
    figs
}

fn report_json(args: &[&str]) -> serde_json::Value {
    let o = run(args);
    assert!(o.status.success(), "rig report failed: {}", stderr(&o));
    serde_json::from_str(&stdout(&o)).expect("json")
}

fn section<'a>(summary: &'a serde_json::Value, id: &str) -> &'a serde_json::Value {
    summary["sections"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["id"] == id)
        .unwrap_or_else(|| panic!("section {id} missing: {summary}"))
}

/// Headless Chromium on `page` with `args`, under a time limit; returns stdout.
fn headless(browser: &Path, page: &Path, args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let o = Command::new("timeout")
        .arg("120")
        .arg(browser)
        .args(common::CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .output()
        .expect("run chromium");
    assert!(
        o.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// After the page loads: each figure's SVG/img elements with a non-zero layout box (and, for
/// an image, decoded), as "ok/total" in `data-rendered`; every image's decode in the body.
/// Only the test's copy of the page gets this script; the report itself has none.
const PROBE: &str = r#"<script>
window.addEventListener('load', () => {
  const figs = document.querySelectorAll('figure');
  for (const f of figs) {
    let ok = 0, n = 0;
    for (const e of f.querySelectorAll('svg, img')) {
      if (e.parentElement.closest('svg')) continue;
      n++;
      const r = e.getBoundingClientRect();
      const decoded = e.tagName.toLowerCase() !== 'img' || e.naturalWidth > 0;
      if (r.width > 0 && r.height > 0 && decoded) ok++;
    }
    f.setAttribute('data-rendered', ok + '/' + n);
  }
  const imgs = [...document.querySelectorAll('img')];
  document.body.setAttribute('data-images', imgs.filter(i => i.naturalWidth > 0).length + '/' + imgs.length);
  document.body.setAttribute('data-probed', String(figs.length));
});
</script>"#;

/// Renders `html_path` in headless Chromium: a screenshot under target/report-screenshots/
/// (checked to be a page with content, not blank), and the DOM after load, in which every
/// figure must have been laid out with a size and every image decoded.
fn render_in_browser(html_path: &Path, name: &str, n_figures: usize) {
    let Some(browser) = chromium("the report") else {
        return;
    };
    let shots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .unwrap()
        .join("report-screenshots");
    std::fs::create_dir_all(&shots).unwrap();
    let png_path = shots.join(format!("{name}.png"));
    let _ = std::fs::remove_file(&png_path);
    headless(
        &browser,
        html_path,
        &[
            &format!("--screenshot={}", png_path.display()),
            "--window-size=1400,4000",
        ],
    );
    let dec = png::Decoder::new(std::io::BufReader::new(
        std::fs::File::open(&png_path).expect("chromium wrote the screenshot"),
    ));
    let mut r = dec.read_info().unwrap();
    let mut px = vec![0; r.output_buffer_size()];
    let info = r.next_frame(&mut px).unwrap();
    assert_eq!((info.width, info.height), (1400, 4000));
    let channels = info.color_type.samples();
    let pixels = px.len() / channels;
    let inked = px
        .chunks(channels)
        .filter(|p| p[..3].iter().any(|&c| c < 200))
        .count();
    assert!(
        inked * 50 > pixels,
        "{name}: the screenshot is nearly blank ({inked} of {pixels} pixels drawn)"
    );

    let html = std::fs::read_to_string(html_path).unwrap();
    let probe = html_path.with_extension("probe.html");
    std::fs::write(&probe, html.replace("</body>", &format!("{PROBE}</body>"))).unwrap();
    let dom = headless(&browser, &probe, &["--dump-dom"]);
    assert!(
        dom.contains(&format!("data-probed=\"{n_figures}\"")),
        "{name}: the browser found every figure"
    );
    let rendered: Vec<&str> = dom
        .split("data-rendered=\"")
        .skip(1)
        .map(|s| s.split('"').next().unwrap())
        .collect();
    assert_eq!(rendered.len(), n_figures, "{name}");
    for r in &rendered {
        let (ok, n) = r.split_once('/').unwrap();
        assert!(
            ok == n && n != "0",
            "{name}: a figure rendered {r} of its elements"
        );
    }
    let images = dom
        .split("data-images=\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap();
    let (ok, n) = images.split_once('/').unwrap();
    assert_eq!(ok, n, "{name}: every image decodes");
    eprintln!("{name}: screenshot {}", png_path.display());
}

#[test]
fn a_closed_loop_session_and_its_plan_make_full_reports_that_render_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    // Two neurons the reference twin predicts well (docs/insilico.md); a small budget is enough
    // for stimuli to show.
    let plan = reference_plan(dir.path(), "65,177", 40);
    let session = dir.path().join("run.h5");
    let v = run_json(&[
        "run",
        "--minutes",
        "0.5",
        "--speed",
        "max",
        "--plan",
        plan.to_str().unwrap(),
        "--out",
        session.to_str().unwrap(),
        "--control",
        "127.0.0.1:0",
        "--json",
    ]);
    assert_eq!(v["frames_lost"], 0);

    let html_path = dir.path().join("report").join("session.html");
    let s = report_json(&[
        "report",
        session.to_str().unwrap(),
        "--out",
        html_path.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(s["kind"], "session");
    let ids: Vec<&str> = s["sections"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, SESSION_SECTIONS);
    for id in SESSION_SECTIONS {
        let sec = section(&s, id);
        assert_eq!(sec["present"], true, "{sec}");
        if id != "overview" {
            assert!(sec["figures"].as_u64().unwrap() >= 1, "{sec}");
        }
    }
    let n = &s["numbers"];
    assert_eq!(n["neurons"], 200.0);
    assert_eq!(n["frames"], 900.0);
    assert_eq!(n["plan_stimuli"], 8.0);
    let (fid, shuffled) = (
        n["median_fidelity"].as_f64().unwrap(),
        n["shuffled_median"].as_f64().unwrap(),
    );
    assert!(
        fid > shuffled + 0.05,
        "the twin beats the shuffled-neuron baseline: {fid} vs {shuffled}"
    );
    assert!(
        n["best_neuron_fidelity"].as_f64() >= n["median_neuron_fidelity"].as_f64()
            && n["median_neuron_fidelity"].as_f64() >= n["worst_neuron_fidelity"].as_f64()
    );
    assert!(n["latency_closed_loop_p99_us"].as_f64().unwrap() > 0.0);
    assert!(n["photodiode_lag_median_ms"].as_f64().unwrap() >= 0.0);
    assert!(n["fidelity_windows"].as_f64().unwrap() >= 2.0);

    let html = std::fs::read_to_string(&html_path).unwrap();
    assert_eq!(s["bytes"].as_u64().unwrap() as usize, html.len());
    let figs = check_page(&html, &s);
    let keys: Vec<&str> = figs.iter().map(|f| f.0.as_str()).collect();
    for key in [
        "mean-image",
        "trace-best",
        "trace-median",
        "trace-worst",
        "fidelity-distribution",
        "fidelity-over-time",
        "plan-gains",
        "plan-stimuli",
        "latency-closed_loop",
        "flip-intervals",
        "photodiode-lag",
    ] {
        assert!(keys.contains(&key), "figure {key} missing: {keys:?}");
    }
    assert!(keys.iter().any(|k| k.starts_with("clip-")), "{keys:?}");
    for (key, body) in &figs {
        if key.starts_with("trace-") {
            // Both lines over the whole session, not a stub.
            assert!(
                path_points(body) > 1000,
                "{key}: {} points",
                path_points(body)
            );
        }
        if key == "mean-image" {
            assert!(body.contains("data:image/png;base64,"));
            assert!(path_points(body) > 200 * 4, "200 ROI outlines");
        }
        if key == "plan-stimuli" {
            assert_eq!(
                body.matches("<img ").count(),
                8 * 4,
                "4 frames of 8 stimuli"
            );
        }
    }

    // An existing page is kept unless --overwrite.
    let o = run(&[
        "report",
        session.to_str().unwrap(),
        "--out",
        html_path.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert_eq!(e.lines().count(), 1, "{e}");
    assert!(
        e.contains("already exists") && e.contains("--overwrite"),
        "{e}"
    );
    assert_eq!(std::fs::read_to_string(&html_path).unwrap(), html);
    let o = run(&[
        "report",
        session.to_str().unwrap(),
        "--out",
        html_path.to_str().unwrap(),
        "--overwrite",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(stdout(&o).contains("9 sections"), "{}", stdout(&o));

    // The plan file itself.
    let plan_html = dir.path().join("plan.html");
    let p = report_json(&[
        "report",
        plan.to_str().unwrap(),
        "--out",
        plan_html.to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(p["kind"], "plan");
    for id in ["overview", "scores", "stimuli"] {
        assert_eq!(section(&p, id)["present"], true, "{p}");
    }
    assert_eq!(p["numbers"]["entries"], 8.0);
    assert_eq!(p["numbers"]["targets"], 2.0);
    let phtml = std::fs::read_to_string(&plan_html).unwrap();
    let pfigs = check_page(&phtml, &p);
    assert_eq!(pfigs.len(), 4, "scores and stimuli of each of the 2 goals");
    assert_eq!(phtml.matches("<img ").count(), 8 * 4);

    // `rig inspect` says the same in text and JSON.
    let i = run_json(&["inspect", session.to_str().unwrap(), "--json"]);
    assert_eq!(i["twin"]["neurons"], 200, "{i}");
    assert_eq!(i["twin"]["frames"], 900, "{i}");
    assert_eq!(i["traces"]["analysed_frames"], 900, "{i}");
    assert_eq!(i["plan"]["stimuli"].as_array().unwrap().len(), 8, "{i}");
    let corr = i["twin"]["median_session_corr"].as_f64().unwrap();
    assert!((corr - n["median_fidelity"].as_f64().unwrap()).abs() < 1e-6);
    assert!(i["latency"]
        .as_array()
        .unwrap()
        .iter()
        .any(|s| s["stage"] == "closed_loop" && s["count"].as_u64() > Some(0)));
    let text = stdout(&run(&["inspect", session.to_str().unwrap()]));
    // Cut short by `head`, it ends quietly: no panic on the closed pipe.
    let piped = Command::new("sh")
        .arg("-c")
        .arg("\"$0\" inspect \"$1\" | head -1 >/dev/null; \"$0\" report \"$1\" --out \"$2\" | head -1 >/dev/null")
        .arg(env!("CARGO_BIN_EXE_rig"))
        .arg(&session)
        .arg(session.with_extension("piped.html"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&piped.stderr);
    assert!(
        !err.contains("panicked") && !err.contains("Broken pipe"),
        "{err}"
    );
    for needle in [
        "traces: 200 ROIs",
        "twin fidelity: median session corr",
        "plan: ",
        "latency p50/p99",
    ] {
        assert!(text.contains(needle), "{needle:?} in {text}");
    }
    let ip = run_json(&["inspect", plan.to_str().unwrap(), "--json"]);
    assert_eq!(ip["kind"], "plan");
    assert_eq!(ip["goals"].as_array().unwrap().len(), 2, "{ip}");
    assert!(stdout(&run(&["inspect", plan.to_str().unwrap()])).contains("goal ROI 65"));

    render_in_browser(&html_path, "session", figs.len());
    render_in_browser(&plan_html, "plan", pfigs.len());
}

#[test]
fn a_session_without_twin_or_traces_says_what_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let session = simulate(dir.path(), "s.h5", 6.0, 2);
    let out = dir.path().join("s.html");
    let s = report_json(&[
        "report",
        session.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--json",
    ]);
    for id in ["overview", "mean-image", "display"] {
        assert_eq!(section(&s, id)["present"], true, "{id}: {s}");
    }
    for (id, why) in [
        ("traces", "twin/"),
        ("fidelity", "twin/"),
        ("fidelity-time", "twin/"),
        ("trial-averages", "traces/dff"),
        ("plan", "`plan`"),
        ("latency", "latency/"),
    ] {
        let sec = section(&s, id);
        assert_eq!(sec["present"], false, "{sec}");
        assert!(
            sec["absent_because"].as_str().unwrap().contains(why),
            "{sec}"
        );
    }
    assert!(s["numbers"].get("median_fidelity").is_none());
    let html = std::fs::read_to_string(&out).unwrap();
    check_page(&html, &s);
    assert_eq!(html.matches("<p class=\"absent\">").count(), 6);
}

#[test]
fn bad_input_is_one_line_naming_the_file_and_leaves_no_page() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("r.html");
    let junk = dir.path().join("junk.h5");
    std::fs::write(&junk, b"not hdf5 at all").unwrap();
    let session = simulate(dir.path(), "s.h5", 3.0, 5);
    let cut = dir.path().join("cut.h5");
    let bytes = std::fs::read(&session).unwrap();
    std::fs::write(&cut, &bytes[..bytes.len() / 3]).unwrap();
    let rois = dir.path().join("rois.h5");
    {
        let _g = edit_guard();
        let f = hdf5::File::create(&rois).unwrap();
        f.new_dataset_builder()
            .with_data(&[1u32, 2, 3])
            .create("ids")
            .unwrap();
    }
    let missing = dir.path().join("missing.h5");
    for (file, needle) in [
        (&junk, "not an HDF5 file"),
        (&missing, "no such file"),
        (&cut, "truncated"),
        (&rois, "not a twinrig session or in-silico plan"),
    ] {
        let o = run(&[
            "report",
            file.to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(!o.status.success(), "{}", file.display());
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "one line: {e}");
        assert!(e.starts_with("rig: error: "), "{e}");
        assert!(
            e.contains(file.to_str().unwrap()) && e.contains(needle),
            "names {} and says {needle:?}: {e}",
            file.display()
        );
        assert!(!e.contains("panicked"), "{e}");
        assert!(!out.exists(), "no page for {}", file.display());
    }
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("partial"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let help = stdout(&run(&["report", "--help"]));
    assert!(
        help.contains("Examples:") && help.contains("rig report"),
        "{help}"
    );
}
