"""Drift: live inputs sampled into rolling windows and compared with reference data.

The pieces, by process:

- request path (every gateway process): `tap.DriftTap.offer` samples a request of a
  route with a `drift` block and appends (decision, parsed body) to a bounded buffer;
  a full buffer drops and counts. Nothing else runs per request.
- background task (every gateway process): `sender.DriftSender` takes the buffer every
  200 ms, extracts features (`features.py`) and sends them in datagrams to the worker
  (`channel.py`); a worker that is down or behind loses samples, counted, never waits.
- drift worker (its own process, `worker.py`, started by `manager.py`): rolling windows
  per route and model version (`window.py`), Evidently against the reference data
  (`detect.py`, `refdata.py`) on each interval, episodes with cooldown (`episodes.py`),
  and the actions: Parquet window, Kubeflow run, webhook (`actions.py`, `kubeflow.py`).
  It publishes its results in a status file (`status.py`) that every gateway process
  reads for `/metrics` and the admin API.

Only the worker imports Evidently and pandas (the `drift` extra): ~300 MB and seconds of
import stay out of the serving processes.
"""
