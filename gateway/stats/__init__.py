"""Fleet statistics: what rollout gates, experiment reports and shadow agreement read.

One computation over Prometheus samples (`counts`), fed by one of three sources
(`sources`): this process's own metrics (`local`, the zero-setup default), the merged
`/metrics` of the supervisor of `--workers N` (`supervisor`, automatic in its workers),
or PromQL instant queries (`prometheus`, `promql`) covering every replica Prometheus
scrapes. Reading happens in the rollout controller's rounds and the admin handlers,
never on the request path.
"""
