//! `plot`: a run's fitness per generation, and a NAMM run's kept cache fraction, as a PNG or
//! SVG chart.

use crate::source::Source;
use anyhow::{anyhow, bail, Context};
use namm_proto::{GenerationRecord, RunRecord};
use plotters::coord::types::{RangedCoordf64, RangedCoordu32};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use std::ops::Range;
use std::path::{Path, PathBuf};

#[derive(clap::Args)]
pub struct PlotArgs {
    /// Run id, as `namm runs` lists it.
    pub run: u64,
    /// Output file; .png or .svg.
    #[arg(short = 'o', long)]
    pub output: PathBuf,
    /// Image size in pixels, WIDTHxHEIGHT.
    #[arg(long, default_value = "1000x700")]
    pub size: String,
}

pub async fn run(source: &mut Source, args: &PlotArgs) -> anyhow::Result<()> {
    // Bad arguments are reported before the coordinator is asked anything.
    let size = parse_size(&args.size)?;
    Format::of(&args.output)?;
    let run = source.get_run(args.run).await?;
    let gens = source.history(args.run).await?;
    draw(&run, &gens, &args.output, size)?;
    outln!("{}", args.output.display());
    Ok(())
}

/// Draws the chart of `run` from its generation records (unfinished ones are left out) to
/// `path`, whose extension chooses PNG or SVG.
pub fn draw(
    run: &RunRecord,
    gens: &[GenerationRecord],
    path: &Path,
    size: (u32, u32),
) -> anyhow::Result<()> {
    let format = Format::of(path)?;
    check_size(size)?;
    let chart = Chart::new(run, gens)?;
    // There are no system fonts to fall back on: the text is laid out with the embedded one.
    plotters::style::register_font(
        "sans-serif",
        FontStyle::Normal,
        epaint_default_fonts::UBUNTU_LIGHT,
    )
    .map_err(|_| anyhow!("the embedded font cannot be read"))?;
    // Drawn in memory first, so that a failure leaves no half-written file behind.
    let bytes = match format {
        Format::Png => {
            let mut rgb = vec![0; size.0 as usize * size.1 as usize * 3];
            chart
                .render(BitMapBackend::with_buffer(&mut rgb, size).into_drawing_area())
                .context("cannot draw the chart")?;
            encode_png(size, &rgb).context("cannot encode the PNG")?
        }
        Format::Svg => {
            let mut svg = String::new();
            chart
                .render(SVGBackend::with_string(&mut svg, size).into_drawing_area())
                .context("cannot draw the chart")?;
            svg.into_bytes()
        }
    };
    std::fs::write(path, bytes).with_context(|| format!("cannot write {}", path.display()))
}

enum Format {
    Png,
    Svg,
}

impl Format {
    fn of(path: &Path) -> anyhow::Result<Format> {
        let ext = path
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("png") => Ok(Format::Png),
            Some("svg") => Ok(Format::Svg),
            _ => bail!(
                "--output {}: the format is chosen by the extension, .png or .svg",
                path.display()
            ),
        }
    }
}

/// Below this the axes and legends no longer fit; above, the bitmap (3 bytes a pixel) would
/// take gigabytes.
const MIN_SIZE: (u32, u32) = (320, 240);
const MAX_SIDE: u32 = 10_000;

fn parse_size(s: &str) -> anyhow::Result<(u32, u32)> {
    let size = s
        .split_once(['x', 'X'])
        .and_then(|(w, h)| Some((w.trim().parse().ok()?, h.trim().parse().ok()?)))
        .with_context(|| format!("--size {s:?}: expected WIDTHxHEIGHT in pixels, e.g. 1000x700"))?;
    check_size(size)?;
    Ok(size)
}

fn check_size((w, h): (u32, u32)) -> anyhow::Result<()> {
    if !(MIN_SIZE.0..=MAX_SIDE).contains(&w) || !(MIN_SIZE.1..=MAX_SIDE).contains(&h) {
        bail!(
            "image size {w}x{h}: must be between {}x{} and {MAX_SIDE}x{MAX_SIDE} pixels",
            MIN_SIZE.0,
            MIN_SIZE.1
        );
    }
    Ok(())
}

fn encode_png((w, h): (u32, u32), rgb: &[u8]) -> Result<Vec<u8>, png::EncodingError> {
    let mut png = Vec::new();
    let mut encoder = png::Encoder::new(&mut png, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header()?;
    writer.write_image_data(rgb)?;
    writer.finish()?;
    Ok(png)
}

/// One line of the chart: (generation, value) points; a non-finite value breaks the line.
struct Series {
    label: &'static str,
    color: RGBColor,
    /// Marks every point, for series measured only now and then.
    markers: bool,
    points: Vec<(u32, f64)>,
}

const BEST: RGBColor = RGBColor(31, 119, 180);
const MEAN: RGBColor = RGBColor(255, 127, 14);
const GENERATION_BEST: RGBColor = RGBColor(44, 160, 44);
const HELDOUT: RGBColor = RGBColor(214, 39, 40);
const KEPT: RGBColor = RGBColor(148, 103, 189);

/// What the chart shows, gathered once whatever the backend.
struct Chart {
    title: String,
    generations: Range<u32>,
    /// NAMM fitness is relative to the full cache, so 1.0 is worth a reference line.
    namm: bool,
    fitness: Vec<Series>,
    /// Empty when the run measured no cache (benchmark runs record 0).
    kept: Vec<Series>,
}

impl Chart {
    fn new(run: &RunRecord, gens: &[GenerationRecord]) -> anyhow::Result<Chart> {
        let gens: Vec<&GenerationRecord> = gens.iter().filter(|g| g.complete).collect();
        let (Some(first), Some(last)) = (
            gens.iter().map(|g| g.generation).min(),
            gens.iter().map(|g| g.generation).max(),
        ) else {
            bail!(
                "run {} has no finished generation yet; nothing to plot",
                run.run_id
            );
        };
        let series =
            |label, color, markers, value: &dyn Fn(&GenerationRecord) -> Option<f64>| Series {
                label,
                color,
                markers,
                points: gens
                    .iter()
                    .filter_map(|g| Some((g.generation, value(g)?)))
                    .collect(),
            };
        let fitness = vec![
            series("best so far", BEST, false, &|g| Some(g.best_fitness)),
            series("population mean", MEAN, false, &|g| Some(g.mean_fitness)),
            series("generation best", GENERATION_BEST, false, &|g| {
                Some(g.generation_best_fitness)
            }),
            series("held-out (CMA-ES mean)", HELDOUT, true, &|g| {
                g.heldout.as_ref().map(|h| h.fitness)
            }),
        ];
        let kept = vec![
            series("mean kept fraction", KEPT, false, &|g| {
                Some(g.mean_kept_fraction)
            }),
            series("held-out kept fraction", HELDOUT, true, &|g| {
                g.heldout.as_ref().map(|h| h.kept_fraction)
            }),
        ];
        let measured = |s: &Series| s.points.iter().any(|&(_, v)| v.is_finite() && v != 0.0);
        let kept = if kept.iter().any(measured) {
            kept
        } else {
            Vec::new()
        };
        Ok(Chart {
            title: if run.name.is_empty() {
                format!("run {}", run.run_id)
            } else {
                format!("{} (run {})", run.name, run.run_id)
            },
            // One generation still needs an axis of some width.
            generations: first..last.max(first + 1),
            namm: gens
                .iter()
                .any(|g| !g.candidate_tasks.is_empty() || g.heldout.is_some()),
            fitness,
            kept,
        })
    }

    fn render<DB: DrawingBackend>(&self, root: DrawingArea<DB, Shift>) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        // Text scales with the image so that large exports stay legible.
        let em = (f64::from(root.dim_in_pixel().1) / 45.0).max(10.0);
        root.fill(&WHITE)?;
        let area = root.titled(&self.title, ("sans-serif", 1.5 * em))?;
        let mut fitness_values: Vec<f64> = self
            .fitness
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1))
            .collect();
        if self.namm {
            fitness_values.push(1.0);
        }
        let fitness = Panel {
            y_desc: "fitness",
            y: padded_range(&fitness_values),
            series: &self.fitness,
            full_cache: self.namm,
            legend: SeriesLabelPosition::LowerRight,
        };
        if self.kept.is_empty() {
            self.panel(&area, &fitness, em)?;
        } else {
            let (top, bottom) = area.split_vertically(area.dim_in_pixel().1 * 3 / 5);
            self.panel(&top, &fitness, em)?;
            let kept = Panel {
                y_desc: "kept cache fraction",
                // A fraction: a fixed scale makes runs comparable; the headroom keeps 1.0 off
                // the frame.
                y: 0.0..1.05,
                series: &self.kept,
                full_cache: false,
                legend: SeriesLabelPosition::UpperRight,
            };
            self.panel(&bottom, &kept, em)?;
        }
        root.present()?;
        Ok(())
    }

    fn panel<DB: DrawingBackend>(
        &self,
        area: &DrawingArea<DB, Shift>,
        panel: &Panel,
        em: f64,
    ) -> anyhow::Result<()>
    where
        DB::ErrorType: 'static,
    {
        let font = ("sans-serif", em);
        let mut chart = ChartBuilder::on(area)
            .margin(em as u32)
            .x_label_area_size((2.5 * em) as u32)
            .y_label_area_size((4.5 * em) as u32)
            .build_cartesian_2d(self.generations.clone(), panel.y.clone())?;
        // As many value labels as fit without overlapping; a major grid only, as the minor one
        // buries thin lines.
        let y_labels = (f64::from(area.dim_in_pixel().1) / (2.5 * em)) as usize;
        chart
            .configure_mesh()
            .x_desc("generation")
            .y_desc(panel.y_desc)
            .y_labels(y_labels.max(2))
            .light_line_style(TRANSPARENT)
            .label_style(font)
            .axis_desc_style(font)
            .draw()?;
        for series in panel.series {
            draw_series(&mut chart, series)?;
        }
        if panel.full_cache {
            let style = BLACK.stroke_width(1);
            let ends = [(self.generations.start, 1.0), (self.generations.end, 1.0)];
            chart
                .draw_series(DashedLineSeries::new(ends, 8, 6, style))?
                .label("full cache")
                .legend(move |(x, y)| DashedPathElement::new([(x, y), (x + 20, y)], 8, 4, style));
        }
        chart
            .configure_series_labels()
            .position(panel.legend.clone())
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .label_font(font)
            .draw()?;
        Ok(())
    }
}

struct Panel<'a> {
    y_desc: &'a str,
    y: Range<f64>,
    series: &'a [Series],
    full_cache: bool,
    legend: SeriesLabelPosition,
}

type Chart2d<'a, DB> = ChartContext<'a, DB, Cartesian2d<RangedCoordu32, RangedCoordf64>>;

fn draw_series<'a, DB: DrawingBackend + 'a>(
    chart: &mut Chart2d<'a, DB>,
    series: &Series,
) -> anyhow::Result<()>
where
    DB::ErrorType: 'static,
{
    let style = series.color.filled().stroke_width(2);
    let mut labelled = false;
    for segment in series.points.split(|p| !p.1.is_finite()) {
        if segment.is_empty() {
            continue;
        }
        // A point alone draws no line: its marker is what keeps it visible.
        let marker = if series.markers || segment.len() == 1 {
            3
        } else {
            0
        };
        let drawn = chart
            .draw_series(LineSeries::new(segment.iter().copied(), style).point_size(marker))?;
        if labelled {
            continue;
        }
        labelled = true;
        drawn.label(series.label);
        if series.markers {
            drawn.legend(move |(x, y)| {
                EmptyElement::at((x + 10, y))
                    + PathElement::new([(-10, 0), (10, 0)], style)
                    + Circle::new((0, 0), 3, style)
            });
        } else {
            drawn.legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], style));
        }
    }
    Ok(())
}

/// The span of the finite values with a margin, so that no line runs along the frame.
fn padded_range(values: &[f64]) -> Range<f64> {
    let (lo, hi) = values
        .iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| {
            (lo.min(v), hi.max(v))
        });
    if lo > hi {
        return 0.0..1.0;
    }
    let pad = if hi > lo {
        (hi - lo) * 0.05
    } else {
        lo.abs().max(1.0) * 0.05
    };
    lo - pad..hi + pad
}

#[cfg(test)]
mod tests {
    use super::*;
    use namm_proto::{CandidateTasks, HeldOut};

    fn namm_run() -> (RunRecord, Vec<GenerationRecord>) {
        let run = RunRecord {
            run_id: 3,
            name: "namm-small".into(),
            ..Default::default()
        };
        let gens = (0..6)
            .map(|g| GenerationRecord {
                run_id: 3,
                generation: g,
                complete: true,
                best_fitness: 0.8 + 0.02 * f64::from(g),
                // A failed generation: its mean must be left out, not drawn.
                mean_fitness: if g == 2 {
                    f64::NAN
                } else {
                    0.7 + 0.02 * f64::from(g)
                },
                generation_best_fitness: 0.78 + 0.02 * f64::from(g),
                mean_kept_fraction: 1.0 - 0.1 * f64::from(g),
                candidate_tasks: vec![CandidateTasks::default()],
                heldout: (g % 3 == 0).then(|| HeldOut {
                    fitness: 0.75 + 0.03 * f64::from(g),
                    kept_fraction: 0.9 - 0.1 * f64::from(g),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect();
        (run, gens)
    }

    fn benchmark_run() -> (RunRecord, Vec<GenerationRecord>) {
        let run = RunRecord {
            run_id: 1,
            name: "sphere".into(),
            ..Default::default()
        };
        let gens = (0..4)
            .map(|g| GenerationRecord {
                run_id: 1,
                generation: g,
                complete: true,
                best_fitness: -10.0 / f64::from(g + 1),
                mean_fitness: -20.0 / f64::from(g + 1),
                generation_best_fitness: -12.0 / f64::from(g + 1),
                ..Default::default()
            })
            .collect();
        (run, gens)
    }

    fn rgb_pixels(png_bytes: Vec<u8>) -> Vec<[u8; 3]> {
        let mut reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
            .read_info()
            .unwrap();
        let mut buf = vec![0; reader.output_buffer_size().unwrap()];
        let info = reader.next_frame(&mut buf).unwrap();
        assert_eq!(info.color_type, png::ColorType::Rgb);
        buf[..info.buffer_size()]
            .chunks_exact(3)
            .map(|p| [p[0], p[1], p[2]])
            .collect()
    }

    #[test]
    fn png_has_the_requested_size_and_the_series() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.png");
        let (run, gens) = namm_run();
        draw(&run, &gens, &path, (800, 600)).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[12..16], b"IHDR");
        assert_eq!(u32::from_be_bytes(bytes[16..20].try_into().unwrap()), 800);
        assert_eq!(u32::from_be_bytes(bytes[20..24].try_into().unwrap()), 600);
        let pixels = rgb_pixels(bytes);
        assert_eq!(pixels.len(), 800 * 600);
        let background = pixels[0];
        assert!(pixels.iter().any(|&p| p != background), "a blank image");
        // Lines are drawn in their exact colour; text and antialiasing only blend.
        for color in [BEST, HELDOUT, KEPT] {
            let RGBColor(r, g, b) = color;
            assert!(pixels.contains(&[r, g, b]), "no pixel of {color:?}");
        }
    }

    #[test]
    fn svg_has_the_title_and_the_legend() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let (run, gens) = namm_run();
        draw(&run, &gens, &path, (1000, 700)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains(r#"width="1000" height="700""#));
        for text in [
            "namm-small (run 3)",
            "best so far",
            "population mean",
            "generation best",
            "held-out (CMA-ES mean)",
            "full cache",
            "mean kept fraction",
            "held-out kept fraction",
        ] {
            assert!(svg.contains(text), "{text:?} missing from the SVG");
        }
    }

    #[test]
    fn benchmark_run_has_neither_reference_line_nor_kept_panel() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("run.svg");
        let (run, gens) = benchmark_run();
        draw(&run, &gens, &path, (1000, 700)).unwrap();
        let svg = std::fs::read_to_string(&path).unwrap();
        assert!(svg.contains("best so far"));
        assert!(!svg.contains("full cache"));
        assert!(!svg.contains("kept"));
        assert!(!svg.contains("held-out"));
    }

    #[test]
    fn smallest_size_and_a_single_generation_draw() {
        let dir = tempfile::tempdir().unwrap();
        let (run, mut gens) = namm_run();
        gens.truncate(1);
        let path = dir.path().join("one.PNG");
        draw(&run, &gens, &path, MIN_SIZE).unwrap();
        let RGBColor(r, g, b) = HELDOUT;
        assert!(rgb_pixels(std::fs::read(&path).unwrap()).contains(&[r, g, b]));
    }

    #[test]
    fn unknown_extension_is_refused_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (run, gens) = namm_run();
        for name in ["x.jpg", "x"] {
            let path = dir.path().join(name);
            let err = draw(&run, &gens, &path, (1000, 700)).unwrap_err();
            assert_eq!(
                err.to_string(),
                format!(
                    "--output {}: the format is chosen by the extension, .png or .svg",
                    path.display()
                )
            );
            assert!(!path.exists());
        }
    }

    #[test]
    fn run_without_finished_generation_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.png");
        let (run, mut gens) = namm_run();
        let expected = "run 3 has no finished generation yet; nothing to plot";
        let err = draw(&run, &[], &path, (1000, 700)).unwrap_err();
        assert_eq!(err.to_string(), expected);
        gens.truncate(1);
        gens[0].complete = false;
        let err = draw(&run, &gens, &path, (1000, 700)).unwrap_err();
        assert_eq!(err.to_string(), expected);
        assert!(!path.exists());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1000x700").unwrap(), (1000, 700));
        assert_eq!(parse_size("640X480").unwrap(), (640, 480));
        for bad in ["", "1000", "1000x", "x700", "axb", "-1x700", "1000x700x2"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.contains(&format!("{bad:?}")), "{err}");
        }
        for bad in ["10x10", "1000x100000", "0x700"] {
            let err = parse_size(bad).unwrap_err().to_string();
            assert!(err.starts_with("image size"), "{err}");
        }
        let dir = tempfile::tempdir().unwrap();
        let (run, gens) = namm_run();
        assert!(draw(&run, &gens, &dir.path().join("x.png"), (0, 0)).is_err());
    }
}
