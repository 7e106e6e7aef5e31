"""Serving: the OpenAI-compatible service on Ray Serve.

The request pipeline, one module per stage:

    ingress → classify (skills) → recruit (experts, k, aggregator) → schedule (batch by expert)
            → expert engines (vLLM) → aggregate → response

    ingress            serving/ingress.py     HTTP, validation, limits, errors mapped once, SSE
    classify           router/classify.py     MiniLM embedding + trained head → P(skill), confidence
    recruit            router/recruit.py      skill-weighted competence − λ·cost → expert(s)
    schedule           serving/schedule.py    per-expert queues, batches, residency (serving/residency.py);
                       the policy (batch-by-expert / FIFO) in serving/policy.py
    expert engines     serving/engines.py     ExpertClient: hosted vLLM (experts/engine.py) or HTTP
    aggregate          serving/aggregate.py   vote / synthesis / most confident

`serving.app.build_app` assembles the Ray Serve application (`import_path:
serving.app:build_app`); `serving.cli` is the `quorum` command.
"""
