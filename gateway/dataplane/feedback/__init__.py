"""Outcome feedback for A/B experiments and rollout gates: `POST /v1/feedback`.

An application that learns how a request turned out (the user converted, clicked, the
fraud verdict was right) posts the request's id with an outcome (true or false) and/or
a numeric reward; the gateway adds it to the counts of the variant and model version
that served the request. Feedback holds across workers and replicas (a fleet, not a
process):

- Signed ids (`ids`). Responses of routes with an `experiment` or `rollout` block carry
  `x-switchyard-feedback-id: fb1.<payload>.<mac>`: route, variant, version and served
  time, signed (HMAC-SHA256) with the fleet secret. When the client sent no usable
  `x-request-id`, the gateway's own request id of such a request is that signed id, so
  the upstream, the logs and the client see one id. Any process that shares the secret
  attributes it with no lookup and no memory, and refuses it past the window.
- Claims (`claims`): the first feedback for a signed id claims it in a store the
  processes share (memory, SQLite for one machine, Redis for a fleet), so a second one
  anywhere is 409. Only the feedback endpoint calls the store; a store that does not
  answer makes that feedback 503 (send it again), never an inference request slower.
- Plain ids (`log`): a client's own `x-request-id` is remembered by the process that
  served it, for a bounded window, as before; it works on that process only.
- Labels (`labels`, `groundtruth`): routes with a `ground_truth` block answer an
  `fb2.` id that also carries what was predicted (read from the buffered response), so a
  true label sent with it is joined with the prediction by any process; counted in the
  `switchyard_ground_truth_*` series and sent to the drift worker.
- Counting stays per process (`log.ExposureLog.outcomes`), exported as the
  `switchyard_experiment_*` series that Prometheus or the supervisor sum over the fleet.

The endpoint itself is the OpenAI front's (`fronts.handle_feedback`); `fleet` reads the
settings (secret, store) of a process or of the workers of a supervisor.
"""

from __future__ import annotations

from gateway.dataplane.feedback.log import (
    FEEDBACK_PATH,
    ExposureLog,
    VariantOutcomes,
    parse_feedback,
    result_of,
)

__all__ = ["FEEDBACK_PATH", "ExposureLog", "VariantOutcomes", "parse_feedback", "result_of"]
