"""Figures from the tidy tables: results/<study>/{trials,metrics}.csv -> results/<study>/figures/*.png|pdf.

    python -m harness figures [STUDY ...] [--paper] [--results-dir DIR]

Every figure function reads tidy tables only (the frame `harness.store.load` returns, and the paper's
tables from `harness.paper`), writes a PNG and a PDF under `out_dir` and returns their paths. Ours are
solid lines with filled markers, the paper's dashed lines with hollow markers; the legend names the model
and task of each series, and the title's caption states model, task, budget, device and seeds.

- `tables`: what the figures plot, as pandas tables (no matplotlib): per-trial values, seeds summaries,
  error bars, reference lines, Pareto masks, the best learning rate, captions.
- `style`: matplotlib style, sizes, markers, colours, and saving PNG and PDF without timestamps.
- one module per figure: `quality_params.quality_vs_params`, `quality_nblocks.quality_vs_nblocks`
  (both drawn by `quality`), `cost.cost_panels`, `pareto.pareto_front`, `commonsense.commonsense_heatmap`.
- `registry`: which figures apply to a study (`FIGURES`, `figures_for`), `draw_study`, `draw_paper`.
- `cli`: the command line (`configure`, `run`).

A figure function raises `tables.MissingColumns` (a ValueError) naming the columns it needs and lacks, and
`tables.NothingToDraw` (a ValueError) when the table has no rows it can draw; `registry.attempt` prints and
skips those.
"""
