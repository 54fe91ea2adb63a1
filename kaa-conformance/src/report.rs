//! Results of a run: one [`CaseResult`] per case, a table a person reads and JUnit
//! XML for CI.

use std::fmt::Write as _;
use std::time::Duration;

/// What a case checks and where the rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaseInfo {
    /// A stable ID, e.g. `CMP-REQ-1`.
    pub id: &'static str,
    /// What the case checks, in one line.
    pub title: &'static str,
    /// The rule it checks: an RFC section, or the kaa-rs document that adds it.
    pub cites: &'static str,
    /// Whether the rule is an extension of kaa-rs beyond the RFCs (such cases can
    /// be skipped with `--skip-extensions`, and a service that does not implement
    /// the extension is still conformant).
    pub extension: bool,
}

/// How a case ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The service behaved as the rule says.
    Passed,
    /// It did not: what was expected and what happened.
    Failed(String),
    /// Not run, and why.
    Skipped(String),
}

/// One case's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaseResult {
    /// The case.
    pub case: CaseInfo,
    /// How it ended.
    pub outcome: Outcome,
    /// How long it took.
    pub elapsed: Duration,
}

/// Runs `cases` in order on the harness `h` and collects their results under the
/// title `suite`: a case for which `not_run` gives an outcome (a skip) is not run,
/// every other one is `run` (`Ok` passes it, `Err` fails it with the reason); after
/// each case `progress` sees its result and `drain` clears what it may have left
/// behind in `h`, so that it does not leak into the next one.
pub(crate) async fn run_cases<H>(
    suite: String,
    cases: &[CaseInfo],
    h: &mut H,
    not_run: impl Fn(&CaseInfo) -> Option<Outcome>,
    mut run: impl AsyncFnMut(&'static str, &mut H) -> Result<(), String>,
    mut drain: impl FnMut(&mut H),
    mut progress: impl FnMut(&CaseResult),
) -> Report {
    let mut report = Report {
        suite,
        results: Vec::new(),
    };
    for case in cases {
        let started = std::time::Instant::now();
        let outcome = match not_run(case) {
            Some(skipped) => skipped,
            None => match run(case.id, h).await {
                Ok(()) => Outcome::Passed,
                Err(why) => Outcome::Failed(why),
            },
        };
        let result = CaseResult {
            case: *case,
            outcome,
            elapsed: started.elapsed(),
        };
        progress(&result);
        report.results.push(result);
        drain(h);
    }
    report
}

/// All the cases of one run.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    /// What was checked (`cmx`, …), for the table's title and JUnit's suite name.
    pub suite: String,
    /// The results, in the order the cases ran.
    pub results: Vec<CaseResult>,
}

impl Report {
    /// Cases that passed.
    pub fn passed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Passed))
    }

    /// Cases that failed.
    pub fn failed(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Failed(_)))
    }

    /// Cases that were skipped.
    pub fn skipped(&self) -> usize {
        self.count(|o| matches!(o, Outcome::Skipped(_)))
    }

    fn count(&self, f: impl Fn(&Outcome) -> bool) -> usize {
        self.results.iter().filter(|r| f(&r.outcome)).count()
    }

    /// True when no case that is not an extension failed. A failed extension
    /// case is reported but does not make the service non-conformant.
    pub fn conformant(&self) -> bool {
        !self
            .results
            .iter()
            .any(|r| !r.case.extension && matches!(r.outcome, Outcome::Failed(_)))
    }

    /// The table a person reads: one line per case, counts, then every failure
    /// with what was expected and what happened.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "kaa-conformance: {}", self.suite);
        let _ = writeln!(out);
        let width = self
            .results
            .iter()
            .map(|r| r.case.id.len())
            .max()
            .unwrap_or(0)
            .max(12);
        let _ = writeln!(
            out,
            "{:<width$} {:<7} {:>8}  {:<10} checks",
            "case", "result", "time", "kind"
        );
        for r in &self.results {
            let result = match r.outcome {
                Outcome::Passed => "pass",
                Outcome::Failed(_) => "FAIL",
                Outcome::Skipped(_) => "skip",
            };
            let kind = if r.case.extension {
                "extension"
            } else {
                "required"
            };
            let _ = writeln!(
                out,
                "{:<width$} {:<7} {:>6}ms  {:<10} {} [{}]",
                r.case.id,
                result,
                r.elapsed.as_millis(),
                kind,
                r.case.title,
                r.case.cites
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{} cases: {} passed, {} failed, {} skipped: {}",
            self.results.len(),
            self.passed(),
            self.failed(),
            self.skipped(),
            if self.conformant() {
                "conformant"
            } else {
                "NOT conformant"
            }
        );
        for r in &self.results {
            match &r.outcome {
                Outcome::Failed(why) => {
                    let _ = writeln!(out, "\n{} FAILED ({}): {}", r.case.id, r.case.cites, why);
                }
                Outcome::Skipped(why) => {
                    let _ = writeln!(out, "\n{} skipped: {}", r.case.id, why);
                }
                Outcome::Passed => {}
            }
        }
        out
    }

    /// JUnit XML (the `testsuites` dialect CI systems read): one `testcase` per
    /// case, `failure` and `skipped` elements with the explanation.
    pub fn to_junit(&self) -> String {
        let total: f64 = self.results.iter().map(|r| r.elapsed.as_secs_f64()).sum();
        let mut out = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        let _ = writeln!(
            out,
            "<testsuites name=\"kaa-conformance\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            self.results.len(),
            self.failed(),
            self.skipped(),
            total
        );
        let _ = writeln!(
            out,
            "  <testsuite name=\"kaa-conformance {}\" tests=\"{}\" failures=\"{}\" skipped=\"{}\" time=\"{:.3}\">",
            xml_escape(&self.suite),
            self.results.len(),
            self.failed(),
            self.skipped(),
            total
        );
        for r in &self.results {
            let _ = write!(
                out,
                "    <testcase classname=\"{}\" name=\"{} {}\" time=\"{:.3}\"",
                xml_escape(&self.suite),
                xml_escape(r.case.id),
                xml_escape(r.case.title),
                r.elapsed.as_secs_f64()
            );
            match &r.outcome {
                Outcome::Passed => out.push_str("/>\n"),
                Outcome::Failed(why) => {
                    let _ = writeln!(
                        out,
                        ">\n      <failure message=\"{}\">{} ({})</failure>\n    </testcase>",
                        xml_escape(why),
                        xml_escape(why),
                        xml_escape(r.case.cites)
                    );
                }
                Outcome::Skipped(why) => {
                    let _ = writeln!(
                        out,
                        ">\n      <skipped message=\"{}\"/>\n    </testcase>",
                        xml_escape(why)
                    );
                }
            }
        }
        out.push_str("  </testsuite>\n</testsuites>\n");
        out
    }
}

/// Escapes text for an XML attribute or element (and drops the control
/// characters XML 1.0 cannot carry).
fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' | '\n' | '\r' => out.push(c),
            c if (c as u32) < 0x20 => {}
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REQUIRED: CaseInfo = CaseInfo {
        id: "X-1",
        title: "a <required> rule",
        cites: "7/CMP",
        extension: false,
    };
    const EXTENSION: CaseInfo = CaseInfo {
        id: "X-2",
        title: "an extension",
        cites: "kaa-rs",
        extension: true,
    };

    fn report(required: Outcome, extension: Outcome) -> Report {
        Report {
            suite: "cmx".into(),
            results: vec![
                CaseResult {
                    case: REQUIRED,
                    outcome: required,
                    elapsed: Duration::from_millis(12),
                },
                CaseResult {
                    case: EXTENSION,
                    outcome: extension,
                    elapsed: Duration::from_millis(3),
                },
            ],
        }
    }

    #[test]
    fn only_required_failures_make_a_service_non_conformant() {
        assert!(report(Outcome::Passed, Outcome::Passed).conformant());
        assert!(report(Outcome::Passed, Outcome::Failed("no".into())).conformant());
        assert!(report(Outcome::Passed, Outcome::Skipped("off".into())).conformant());
        assert!(!report(Outcome::Failed("no".into()), Outcome::Passed).conformant());
    }

    #[test]
    fn the_table_counts_and_explains_failures() {
        let r = report(
            Outcome::Failed("expected 200, got 500".into()),
            Outcome::Passed,
        );
        let table = r.to_table();
        assert!(table.contains("X-1          FAIL"), "{table}");
        assert!(table.contains("2 cases: 1 passed, 1 failed, 0 skipped: NOT conformant"));
        assert!(table.contains("X-1 FAILED (7/CMP): expected 200, got 500"));
    }

    #[test]
    fn junit_is_escaped_and_counts() {
        let r = report(
            Outcome::Failed("got \"<nothing>\" & \u{1}more".into()),
            Outcome::Skipped("skipped".into()),
        );
        let xml = r.to_junit();
        assert!(
            xml.contains("tests=\"2\" failures=\"1\" skipped=\"1\""),
            "{xml}"
        );
        assert!(
            xml.contains("name=\"X-1 a &lt;required&gt; rule\""),
            "{xml}"
        );
        assert!(
            xml.contains("message=\"got &quot;&lt;nothing&gt;&quot; &amp; more\""),
            "{xml}"
        );
        assert!(xml.contains("<skipped message=\"skipped\"/>"));
        assert!(xml.ends_with("</testsuites>\n"));
    }
}
