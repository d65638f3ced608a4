//! The live view of `namm-coord start` on a terminal: one progress line per running run
//! (phase, units done of all, workers on it, the last generation's figures, an ETA for the
//! phase), with log lines printed above the bars instead of through them.

use std::collections::HashMap;
use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

use crate::coordinator::{Coordinator, RunProgress};

/// A `tracing` writer that prints each log line above the progress bars.
pub struct AboveBars {
    bars: MultiProgress,
    line: Vec<u8>,
}

impl AboveBars {
    pub fn new(bars: MultiProgress) -> Self {
        Self {
            bars,
            line: Vec::new(),
        }
    }
}

impl Write for AboveBars {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if !self.line.is_empty() {
            let line = std::mem::take(&mut self.line);
            self.bars.suspend(|| std::io::stderr().write_all(&line))?;
        }
        Ok(())
    }
}

impl Drop for AboveBars {
    fn drop(&mut self) {
        let _ = self.flush();
    }
}

/// Redraws the bars every second until the task is dropped.
pub async fn show(coord: Arc<Coordinator>, bars: MultiProgress) {
    let style = ProgressStyle::with_template(
        "{prefix} [{bar:24}] {pos}/{len} units, {elapsed} elapsed, eta {eta}  {msg}",
    )
    .expect("a valid progress template")
    .progress_chars("=> ");
    let mut shown: HashMap<u64, (ProgressBar, String)> = HashMap::new();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Some(runs) = coord.progress() else {
            continue;
        };
        shown.retain(|id, (bar, _)| {
            let running = runs.iter().any(|r| r.run_id == *id);
            if !running {
                bar.finish_and_clear();
            }
            running
        });
        for run in &runs {
            let (bar, phase) = shown.entry(run.run_id).or_insert_with(|| {
                let bar = bars.add(ProgressBar::new(run.total as u64).with_style(style.clone()));
                (bar, String::new())
            });
            if *phase != run.phase {
                // A new phase: its own count and ETA.
                bar.reset();
                bar.set_length(run.total as u64);
                phase.clone_from(&run.phase);
            }
            bar.set_prefix(format!("run {} {}: {}", run.run_id, run.name, run.phase));
            bar.set_position(run.done as u64);
            bar.set_message(message(&coord, run));
        }
    }
}

fn message(coord: &Coordinator, run: &RunProgress) -> String {
    let workers = format!(
        "{} worker{}",
        run.workers,
        if run.workers == 1 { "" } else { "s" }
    );
    let last = run.generations_done.checked_sub(1).and_then(|g| {
        coord
            .store()
            .ok()?
            .get_generation(run.run_id, g)
            .ok()
            .flatten()
    });
    match last {
        Some(g) if g.mean_kept_fraction > 0.0 => format!(
            "{workers}; generation {}: best {:.4}, mean {:.4}, kept {:.3}",
            g.generation, g.best_fitness, g.mean_fitness, g.mean_kept_fraction
        ),
        Some(g) => format!(
            "{workers}; generation {}: best {:.4}, mean {:.4}",
            g.generation, g.best_fitness, g.mean_fitness
        ),
        None => workers,
    }
}
