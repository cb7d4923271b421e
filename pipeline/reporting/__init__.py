"""Reporting: ``report`` (metrics.json, report.md, plots), ``experiments`` (the ablation suites' sections),
``images_plot`` and ``gallery`` (the HTML gallery of top-10s)."""
