"""The study pipeline, by concern:

- parameters and profiles: `config`; run folders and manifests: `run_folders`, the released
  baseline: `release`;
- the papermill pipeline: `pipeline` (plans and starts runs), `execution` (one run in its
  .partial twin);
- what notebooks share: `notebook` (a run's session), `combination` (notebook 04's stages);
- results and tables: `results`, `table1`, `comparisons`, `stats`, `edge_latency`;
- figures: `plots`, `plot_kit`, `run_plots`, `kept_tokens`;
- the audit of the study's own numbers: `audit`; the executed study as pages: `book`.
"""
