"""Serving: the OpenAI-compatible service on Ray Serve.

One chat request, stage by stage (`serving/pipeline.py` is this list as code):

    ingress   serving/ingress.py     HTTP, validation, limits, errors mapped once, SSE
    route     router/router.py       classify (router/classify.py) → recruit (router/recruit.py)
    dispatch  serving/dispatch.py    to the chosen expert, with retry, fallback, circuit breakers
    aggregate serving/aggregate.py   k > 1 experts: synthesis / vote / most confident
    experts   experts/clients.py     hosted vLLM (experts/engine.py) through a Serve handle, or HTTP

Around the stages: `deployments.py` (the Ray Serve wiring, `import_path:
serving.deployments:build_app`), `schedule.py` + `schedule_policy.py` + `residency.py` (with a
registry `residency` section: per-expert queues, batches, engine swaps, in the expert pool's
process), `auth.py`, `metrics.py`, `audit.py`, `observe.py`, `batches.py`, and `cli.py` (the
`quorum` command).
"""
