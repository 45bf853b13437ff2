//! `ironclaw doctor`: the library's host report, as text or JSON.

use ironclaw_orchestrator::doctor;

/// Prints the report; exit code 0 when VMs can run here, else 1.
pub async fn doctor_command(json: bool, quick: bool) -> anyhow::Result<i32> {
    let mut report = doctor::run();
    if report.can_run() && !quick {
        report.checks.push(doctor::prototype_check().await);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for c in &report.checks {
            let mark = match c.level {
                doctor::Level::Ok => "ok  ",
                doctor::Level::Info => "info",
                doctor::Level::Fail => "FAIL",
            };
            // The report speaks of config settings; say which flag reaches them.
            let detail = super::field_flags::in_flag_terms(&c.detail);
            println!("[{mark}] {:<15} {detail}", c.name);
        }
    }
    Ok(if report.can_run() { 0 } else { 1 })
}
