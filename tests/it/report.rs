//! `backtest --report OUT.html` (issue 13.2), looked at in a real browser: headless Chromium
//! loads the page the binary wrote from three conformance streams, and the DOM it built must
//! hold one mark per signal line the plain backtest prints, one per job `--simulate` prints,
//! one series per policy, and the summary table must say what `--summary --json` says; its
//! screenshot must not be blank. Hostile policy names stay text.
//!
//! Chromium is required, not optional: without it these tests fail with the command that
//! installs it (`.ci/run` installs it when missing).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use serde_json::{Value, json};

use crate::support::*;

/// Three conformance streams, interleaved line by line as one recording (60 s between a
/// model's events), and the config that watches them: ADWIN, Page-Hinkley and a window on
/// the real-valued streams, DDM (which warns) on the binary one.
fn fixture(sb: &Sandbox) -> (PathBuf, PathBuf) {
    let streams = crate::conformance::load();
    let picked: Vec<(&str, &str)> = vec![
        ("real_abrupt_mean", "drift_score"),
        ("real_gradual_mean", "drift_score"),
        ("bin_abrupt", "error"),
    ];
    let values: Vec<(&str, &str, &[f64])> = picked
        .iter()
        .map(|&(name, field)| {
            let s = streams.iter().find(|s| s.name == name).unwrap();
            (name, field, s.values.as_slice())
        })
        .collect();
    let longest = values.iter().map(|v| v.2.len()).max().unwrap();
    let mut lines = Vec::new();
    for i in 0..longest {
        for &(name, field, vals) in &values {
            let Some(&v) = vals.get(i) else { continue };
            let mut e = json!({"model_id": name, "ts": 1_800_000_000 + i as u64 * 60});
            e[field] = if field == "error" {
                json!(v >= 0.5)
            } else {
                json!(v)
            };
            lines.push(e.to_string());
        }
    }
    let events = sb.write("events.jsonl", &(lines.join("\n") + "\n"));
    let config = sb.write(
        "config.toml",
        r#"[hooks]
full = { command = ["/bin/true"], timeout_s = 60 }
fine_tune = { command = ["/bin/true"], timeout_s = 60 }
cooldown_s = 3600

[[models]]
match = "real_*"
[[models.policies]]
name = "score"
kind = "adwin"
metric = "drift_score"
[[models.policies]]
name = "ph"
kind = "page_hinkley"
metric = "drift_score"
threshold = 20
[[models.policies]]
name = "mean"
kind = "drift_window"
window = 100
threshold = 1.0

[[models]]
match = "bin_*"
[[models.policies]]
name = "ddm"
kind = "ddm"
metric = "error"
action = "fine_tune"
"#,
    );
    (events, config)
}

fn run_ok(sb: &Sandbox, args: &[&str]) -> String {
    let o = sb.run(args);
    assert!(o.status.success(), "{args:?}: {}", out_text(&o));
    stdout(&o)
}

/// Headless Chromium with `args` then the page, in the sandbox (its own profile directory).
fn chromium(sb: &Sandbox, args: &[&str], page: &Path) -> Output {
    let program = ["chromium", "chromium-browser"]
        .into_iter()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "headless Chromium is required to test the report in a browser and none was \
                 found on PATH: install it (apt-get install -y chromium; .ci/run does)"
            )
        });
    let mut cmd = Command::new(program);
    sb.apply_env(&mut cmd);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--hide-scrollbars",
    ])
    .arg(format!(
        "--user-data-dir={}",
        sb.path("chromium-profile").display()
    ))
    .args(args)
    .arg(format!("file://{}", page.display()));
    let o = run_with_timeout(cmd, None, Duration::from_secs(180)).unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "chromium {args:?}: {}", out_text(&o));
    o
}

/// The value of attribute `name` in the first tag of `tag` (as the DOM serializes it).
fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let end = tag.find('>').unwrap_or(tag.len());
    let head = &tag[..end];
    let at = head.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&head[at..at + head[at..].find('"')?])
}

/// Every value of attribute `name` in `s`.
fn attrs<'a>(s: &'a str, name: &str) -> Vec<&'a str> {
    let key = format!(" {name}=\"");
    s.match_indices(&key)
        .map(|(i, _)| {
            let v = &s[i + key.len()..];
            &v[..v.find('"').unwrap()]
        })
        .collect()
}

/// The chunks of `s` that start with `open` (up to the next one).
fn chunks<'a>(s: &'a str, open: &str) -> Vec<&'a str> {
    s.split(open).skip(1).collect()
}

/// The inside of the first `<g class="{class}" ...>...</g>` in `s`.
fn group<'a>(s: &'a str, class: &str) -> &'a str {
    let start = s
        .find(&format!("<g class=\"{class}\""))
        .unwrap_or_else(|| panic!("no group {class}"));
    let inner = &s[start..];
    &inner[..inner.find("</g>").unwrap()]
}

/// The text inside `<td class="{class}"...>` of a table row.
fn cell<'a>(row: &'a str, class: &str) -> &'a str {
    let at = row
        .find(&format!("<td class=\"{class}\""))
        .unwrap_or_else(|| panic!("no cell {class} in {row}"));
    let rest = &row[at..];
    let open = rest.find('>').unwrap() + 1;
    &rest[open..rest.find("</td>").unwrap()]
}

type Key = (String, String, String);

#[test]
fn report_in_chromium_has_a_mark_per_signal_and_job_a_series_per_policy_and_the_summary() {
    let sb = Sandbox::new();
    let (events, config) = fixture(&sb);
    let (ev, cfg) = (events.to_str().unwrap(), config.to_str().unwrap());
    let page = sb.path("report.html");
    let o = sb.run(&[
        "backtest",
        "--config",
        cfg,
        "--retrain-s",
        "600",
        "--report",
        page.to_str().unwrap(),
        ev,
    ]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert_eq!(stdout(&o), "", "--report prints no signal lines");

    // What the page must show: the plain lines, the simulated jobs, the summaries.
    let mut signals: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
    for l in json_values(&run_ok(&sb, &["backtest", "--config", cfg, ev])) {
        let key = (
            l["model_id"].as_str().unwrap().to_owned(),
            l["policy"].as_str().unwrap().to_owned(),
            l["signal"].as_str().unwrap().to_owned(),
        );
        signals
            .entry(key)
            .or_default()
            .push(l["index"].as_u64().unwrap());
    }
    let mut jobs: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let simulated = run_ok(
        &sb,
        &[
            "backtest",
            "--config",
            cfg,
            "--simulate",
            "--retrain-s",
            "600",
            ev,
        ],
    );
    for l in json_values(&simulated) {
        let key = (
            l["model_id"].as_str().unwrap().to_owned(),
            l["policy"].as_str().unwrap().to_owned(),
        );
        jobs.entry(key)
            .or_default()
            .push(l["job"].as_u64().unwrap());
    }
    let summary: Value = serde_json::from_str(&run_ok(
        &sb,
        &["backtest", "--config", cfg, "--summary", "--json", ev],
    ))
    .unwrap();
    let sim_summary: Value = serde_json::from_str(&run_ok(
        &sb,
        &[
            "backtest",
            "--config",
            cfg,
            "--summary",
            "--simulate",
            "--retrain-s",
            "600",
            "--json",
            ev,
        ],
    ))
    .unwrap();
    // The fixture exercises every kind of mark.
    let count = |kind: &str| -> usize {
        signals
            .iter()
            .filter(|(k, _)| k.2 == kind)
            .map(|(_, v)| v.len())
            .sum()
    };
    assert!(count("drift") > 100 && count("warning") > 10, "{signals:?}");
    assert!(jobs.values().map(Vec::len).sum::<usize>() > 10, "{jobs:?}");

    // Self-contained: nothing to fetch, no script.
    let raw = std::fs::read_to_string(&page).unwrap();
    for banned in [
        "<script", "http:", "https:", "src=", "<link", "url(", "@import",
    ] {
        assert!(!raw.contains(banned), "the page holds {banned:?}");
    }

    let dom = stdout(&chromium(&sb, &["--dump-dom"], &page));
    assert!(dom.contains("<table class=\"summary\""), "{dom}");
    let mut seen_signals: BTreeMap<Key, Vec<u64>> = BTreeMap::new();
    let mut seen_jobs: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
    let models = chunks(&dom, "<section class=\"model\"");
    assert_eq!(models.len(), 3, "one section per model");
    for section in models {
        let model = attr(section, "data-model-id").unwrap().to_owned();
        let figures = chunks(section, "<figure class=\"policy\"");
        let expected = if model.starts_with("real_") { 3 } else { 1 };
        assert_eq!(figures.len(), expected, "{model}: one figure per policy");
        for fig in figures {
            let policy = attr(fig, "data-policy").unwrap().to_owned();
            let series = fig.matches("<path class=\"series\"").count();
            assert_eq!(series, 1, "{model}/{policy}: one series");
            assert_eq!(
                attrs(fig, "data-policy")
                    .iter()
                    .filter(|p| **p != policy)
                    .count(),
                0,
                "{model}/{policy}: everything in its figure is its own"
            );
            for kind in ["drift", "warning"] {
                let marks: Vec<u64> =
                    attrs(group(fig, &format!("signals {kind}")), "data-signal-index")
                        .iter()
                        .map(|v| v.parse().unwrap())
                        .collect();
                if !marks.is_empty() {
                    seen_signals.insert((model.clone(), policy.clone(), kind.to_owned()), marks);
                }
            }
            let marks: Vec<u64> = attrs(group(fig, "jobs"), "data-job-index")
                .iter()
                .map(|v| v.parse().unwrap())
                .collect();
            if !marks.is_empty() {
                seen_jobs.insert((model.clone(), policy.clone()), marks);
            }
        }
    }
    assert_eq!(
        seen_signals, signals,
        "one mark per signal line, at its index"
    );
    assert_eq!(seen_jobs, jobs, "one mark per simulated job");

    // The summary table says what --summary --json (and, for jobs, --simulate) says.
    let table = &dom[dom.find("<table class=\"summary\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let rows = chunks(table, "<tr data-model-id=");
    let plain = summary.as_array().unwrap();
    let sim = sim_summary.as_array().unwrap();
    assert_eq!(rows.len(), plain.len());
    for ((row, p), s) in rows.iter().zip(plain).zip(sim) {
        let row = &format!("<tr data-model-id={row}");
        let name = (
            attr(row, "data-model-id").unwrap(),
            attr(row, "data-policy").unwrap(),
        );
        assert_eq!(
            name,
            (
                p["model_id"].as_str().unwrap(),
                p["policy"].as_str().unwrap()
            )
        );
        for field in ["events", "signals", "warnings"] {
            assert_eq!(
                cell(row, &format!("n {field}")),
                p[field].to_string(),
                "{name:?} {field}"
            );
        }
        assert_eq!(cell(row, "n jobs"), s["jobs"].to_string(), "{name:?} jobs");
        let per: f64 = cell(row, "n per_10k").parse().unwrap();
        assert_eq!(per, p["signals_per_10k"].as_f64().unwrap(), "{name:?}");
        let first = &row[row.find("<td class=\"first_signal\"").unwrap()..];
        match p["first_signal"].as_object() {
            Some(f) => {
                assert_eq!(
                    attr(first, "data-index"),
                    Some(f["index"].to_string().as_str())
                );
                let ts: f64 = attr(first, "data-ts").unwrap().parse().unwrap();
                assert_eq!(ts, f["ts"].as_f64().unwrap(), "{name:?}");
            }
            None => assert_eq!(attr(first, "data-index"), None, "{name:?}"),
        }
    }

    // The screenshot is a picture, not a blank page.
    let shot = sb.path("report.png");
    chromium(
        &sb,
        &[
            &format!("--screenshot={}", shot.display()),
            "--window-size=1200,2000",
        ],
        &page,
    );
    let (width, height, colours, inked) = picture(&shot);
    assert_eq!((width, height), (1200, 2000));
    assert!(colours >= 64, "{colours} distinct colours: a blank page?");
    let share = inked as f64 / (width * height) as f64;
    assert!(
        share > 0.04,
        "{inked} pixels ({:.1}%) differ from the background: a blank page?",
        share * 100.0
    );
}

/// A PNG's size, its distinct colours and how many pixels are not (near) white.
fn picture(path: &Path) -> (u64, u64, usize, u64) {
    let file = std::io::BufReader::new(std::fs::File::open(path).unwrap());
    let mut decoder = png::Decoder::new(file);
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().unwrap();
    let mut buf = vec![0; reader.output_buffer_size().unwrap()];
    let info = reader.next_frame(&mut buf).unwrap();
    let channels = info.color_type.samples();
    assert!(channels >= 3, "{:?}", info.color_type);
    let mut colours = std::collections::HashSet::new();
    let mut inked = 0u64;
    for px in buf[..info.line_size * info.height as usize].chunks_exact(channels) {
        colours.insert((px[0], px[1], px[2]));
        if px[..3].iter().any(|&c| c < 240) {
            inked += 1;
        }
    }
    (
        u64::from(info.width),
        u64::from(info.height),
        colours.len(),
        inked,
    )
}

/// Policy names come from the config and may hold markup; model ids cannot (the protocol
/// refuses `<`): in the page both stay text, in the browser too.
#[test]
fn hostile_names_in_the_report_stay_text() {
    let sb = Sandbox::new();
    let config = sb.write(
        "config.toml",
        r#"[[models]]
match = "*"
[[models.policies]]
name = "<script>alert(1)</script>"
kind = "static_threshold"
max_drift = 0.5
[[models.policies]]
name = "\"><img src=x onerror=alert(2)>"
kind = "drift_window"
window = 1
threshold = 0.5
"#,
    );
    let events = sb.write(
        "events.jsonl",
        "{\"model_id\":\"<script>\",\"drift_score\":0.9}\n\
         {\"model_id\":\"m\",\"drift_score\":0.9}\n\
         {\"model_id\":\"m\",\"drift_score\":0.1}\n",
    );
    let page = sb.path("report.html");
    let o = sb.run(&[
        "backtest",
        "--config",
        config.to_str().unwrap(),
        "--skip-invalid",
        "--report",
        page.to_str().unwrap(),
        events.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", out_text(&o));
    assert!(combined(&o).contains("1 invalid line"), "{}", out_text(&o));
    let raw = std::fs::read_to_string(&page).unwrap();
    assert!(!raw.contains("<script"), "{raw}");
    assert!(!raw.contains("<img"), "{raw}");
    assert!(
        raw.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
        "{raw}"
    );
    assert!(
        raw.contains("&quot;&gt;&lt;img src=x onerror=alert(2)&gt;"),
        "{raw}"
    );

    let dom = stdout(&chromium(&sb, &["--dump-dom"], &page));
    assert!(!dom.contains("<script"), "{dom}");
    assert!(!dom.contains("<img"), "{dom}");
    // Both policies are figures of model m, their names text in the caption.
    let figures = chunks(&dom, "<figure class=\"policy\"");
    assert_eq!(figures.len(), 2, "{dom}");
    assert!(
        figures[0].contains("<b>&lt;script&gt;alert(1)&lt;/script&gt;</b>"),
        "{dom}"
    );
    assert!(
        figures[1].contains("<b>\"&gt;&lt;img src=x onerror=alert(2)&gt;</b>"),
        "{dom}"
    );
}

/// Standard input is read once, and spooled for the simulation's pass: the page is the one
/// the file gives (but for the name of the events).
#[test]
fn a_report_from_standard_input_is_the_report_from_the_file() {
    let sb = Sandbox::new();
    let (events, config) = fixture(&sb);
    let (ev, cfg) = (events.to_str().unwrap(), config.to_str().unwrap());
    let (file_page, stdin_page) = (sb.path("file.html"), sb.path("stdin.html"));
    let args = |page: &Path, input: &str| -> Vec<String> {
        [
            "backtest",
            "--config",
            cfg,
            "--retrain-s",
            "600",
            "--report",
        ]
        .iter()
        .map(|s| s.to_string())
        .chain([page.display().to_string(), input.to_owned()])
        .collect()
    };
    let file_args = args(&file_page, ev);
    run_ok(
        &sb,
        &file_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let stdin_args = args(&stdin_page, "-");
    let o = run_with_timeout(
        sb.command(&stdin_args.iter().map(String::as_str).collect::<Vec<_>>()),
        Some(std::fs::read(&events).unwrap()),
        Duration::from_secs(120),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(o.status.success(), "{}", out_text(&o));
    let from_file = std::fs::read_to_string(&file_page)
        .unwrap()
        .replace(ev, "-");
    let from_stdin = std::fs::read_to_string(&stdin_page).unwrap();
    assert!(
        from_stdin.matches("data-job-index=").count() > 10,
        "{from_stdin}"
    );
    assert!(from_file == from_stdin, "the pages differ");
}

/// Probation verdicts (issue 19, item 5) on the timeline: one mark per verdict line
/// `--simulate` prints, in the figure of the policy whose decision started the retrain, its
/// class the outcome (the colour); the legend names them and the summary table counts them as
/// `--summary --json` does.
#[test]
fn report_in_chromium_has_a_mark_per_probation_verdict() {
    let sb = Sandbox::new();
    let (events, config) = crate::backtest::probation_fixture(&sb);
    let (ev, cfg) = (events.to_str().unwrap(), config.to_str().unwrap());
    let page = sb.path("report.html");
    run_ok(
        &sb,
        &[
            "backtest",
            "--config",
            cfg,
            "--report",
            page.to_str().unwrap(),
            ev,
        ],
    );
    let mut verdicts: Vec<(String, String, String, String, String)> = Vec::new();
    for l in json_values(&run_ok(
        &sb,
        &["backtest", "--config", cfg, "--simulate", ev],
    )) {
        if let Some(outcome) = l.get("probation") {
            verdicts.push((
                l["model_id"].as_str().unwrap().to_owned(),
                l["policy"].as_str().unwrap().to_owned(),
                l["index"].to_string(),
                outcome.as_str().unwrap().to_owned(),
                l["job"].to_string(),
            ));
        }
    }
    assert_eq!(verdicts.len(), 2, "{verdicts:?}");
    let rows: Value = serde_json::from_str(&run_ok(
        &sb,
        &[
            "backtest",
            "--config",
            cfg,
            "--simulate",
            "--summary",
            "--json",
            ev,
        ],
    ))
    .unwrap();

    let dom = stdout(&chromium(&sb, &["--dump-dom"], &page));
    assert!(
        dom.contains("one per probation verdict"),
        "the legend: {dom}"
    );
    let mut seen = Vec::new();
    for section in chunks(&dom, "<section class=\"model\"") {
        let model = attr(section, "data-model-id").unwrap();
        for fig in chunks(section, "<figure class=\"policy\"") {
            let policy = attr(fig, "data-policy").unwrap();
            for mark in chunks(group(fig, "verdicts"), "<path ") {
                let mark = &format!("<path {mark}");
                let outcome = attr(mark, "data-probation").unwrap();
                assert_eq!(attr(mark, "class"), Some(outcome), "{mark}");
                seen.push((
                    model.to_owned(),
                    policy.to_owned(),
                    attr(mark, "data-verdict-index").unwrap().to_owned(),
                    outcome.to_owned(),
                    attr(mark, "data-job").unwrap().to_owned(),
                ));
            }
        }
    }
    seen.sort();
    verdicts.sort();
    assert_eq!(seen, verdicts, "one mark per verdict line");

    let table = &dom[dom.find("<table class=\"summary\"").unwrap()..];
    let table = &table[..table.find("</table>").unwrap()];
    let cells = chunks(table, "<td class=\"probation\"");
    let rows = rows.as_array().unwrap();
    assert_eq!(cells.len(), rows.len());
    for (cell, row) in cells.iter().zip(rows) {
        let cell = &format!("<td class=\"probation\"{cell}");
        for (key, field) in [
            ("data-promoted", "promoted"),
            ("data-rolled-back", "rolled_back"),
            ("data-inconclusive", "inconclusive"),
        ] {
            assert_eq!(
                attr(cell, key),
                Some(row["probation"][field].to_string().as_str()),
                "{cell} against {row}"
            );
        }
    }
}
