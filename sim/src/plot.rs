//! The `--plot` SVG: each region's sellable quota over (virtual) time.

use plotters::prelude::*;

use crate::Report;

pub fn svg(r: &Report) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, (900, 480)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        let t_max = r.series.last().map_or(1, |(t, _)| *t).max(1);
        let y_max = r
            .series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .max()
            .unwrap_or(1)
            .max(1);
        let caption = format!(
            "{} · {:?} · seed {}: sellable quota per region",
            r.scenario, r.strategy, r.seed
        );
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(0u64..t_max, 0i64..y_max)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("virtual time (ms since the sale opened)")
            .y_desc("sellable")
            .draw()
            .map_err(|e| e.to_string())?;
        for (i, name) in r.regions.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(
                    r.series
                        .iter()
                        .map(|(t, v)| (*t, v.get(i).copied().unwrap_or(0))),
                    color.stroke_width(2),
                ))
                .map_err(|e| e.to_string())?
                .label(name.clone())
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 16, y)], color.stroke_width(2))
                });
        }
        chart
            .configure_series_labels()
            .border_style(BLACK)
            .background_style(WHITE.mix(0.8))
            .draw()
            .map_err(|e| e.to_string())?;
        root.present().map_err(|e| e.to_string())?;
    }
    Ok(out)
}
