//! Writing a run's results: `results.json`, `report.md` and SVG charts.
