"""The study pipeline: parameters and run folders (`config`), the papermill runner (`pipeline`),
what a run records (`results`, `runs`), statistics (`stats`), figures (`plots`), the audit
(`audit`) and edge latency of saved models (`edge_latency`)."""
