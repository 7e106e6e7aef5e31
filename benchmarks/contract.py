"""Hold the HTTP API to its published OpenAPI schema and record the run.

    python -m benchmarks.contract [--examples N]

Runs tests/fuzz/test_api_contract.py (schemathesis, coverage + fuzzing phases, every check, with
an admin key and with none) and writes the generated-case counts and the failures to the
`contract` section of benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse

from benchmarks._results import machine_description, write_section
from benchmarks._schemathesis_run import run_schemathesis_test

FIXED = """Failures schemathesis found while this contract was built, and what changed:

- `status_code_conformance`, every operation: 400/401/403/404/413/429/503 answered but not
  documented (the schema listed FastAPI's 422, which Quorum never sends). Now each operation
  lists each status it can return with `OpenAIError` (`AnthropicError` on `/v1/messages`).
- `unsupported_method`, every operation: `TRACE` (any undeclared method) got a 405 without
  `Allow` (the handler dropped the exception's headers); then `allow_header_conformance` on
  `/v1/files`, `/v1/files/{file_id}`, `/v1/batches`: `Allow` named only the first route's
  methods. Now `Allow` lists every method of the path. Without a key these 405s (and 404s) were
  401s; now a request no route takes is answered 404/405 before access control.
- `positive_data_acceptance`: `POST /v1/batches` (no body in the schema; "not valid JSON"), now a
  published `BatchRequest` body validated by the same model; `POST /v1/files` with an empty
  `purpose` (FastAPI's 422 body; now an enum and any form error a 400 in OpenAI's shape); chat and
  `/v1/route` with a `tool` message lacking `tool_call_id`, and the other rules the handlers add
  to the model (refused parameters, limits, `logit_bias` keys, `stop` count, `top_logprobs` /
  `stream_options` / `tool_choice` needing their companions), now stated in the schema;
  `/v1/completions`, `/v1/responses`, `/v1/messages` published no body schema at all, now they
  publish what their translations accept.
- `not_a_server_error`: `/v1/responses` (and by the same code `/v1/messages`) answered 500 to a
  text part whose `text` is not a string; now a 400.
- `positive_data_acceptance` at 100 examples: chat and `/v1/route` with `response_format`
  `{"type": "json_schema"}` and no `json_schema` (now an if/then in the schema).
- Excused in the test, each with its reason there: a 413 counts as a rejection (the byte limit is
  not a JSON Schema keyword); a 400 for a named `tool_choice` not among `tools`, and for
  `/v1/messages` over `router.max_messages` after translation (each `tool_result` block is a chat
  message), from `positive_data_acceptance` only; a `POST /v1/files` `file` part "mutated" to a
  non-string type, which reaches the server as valid bytes, from `negative_data_rejection` only.
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=25, help="fuzzing examples per operation")
    args = parser.parse_args(argv)
    run = run_schemathesis_test("tests/fuzz/test_api_contract.py", "CONTRACT", args.examples)
    data, elapsed = run.report, run.elapsed_s
    rows = "\n".join(
        f"| {key} | {r['cases'].get('coverage', 0)} | {r['cases'].get('fuzzing', 0)} | "
        f"{r['failures']} |" for key, r in sorted(data.items())
    )  # fmt: skip
    total = sum(sum(r["cases"].values()) for r in data.values())
    body = (
        f"Schemathesis {run.version}, `--checks all` equivalent (every built-in check), coverage "
        f"and fuzzing phases, every operation of /openapi.json, against the real app in process "
        f"(`create_api` + batches + feedback + compat surfaces, scripted experts, access control "
        f"on): **{total} generated cases** in {elapsed:.0f} s; pytest exit status "
        f"{run.returncode}.\n\n| key | coverage cases | fuzzing cases | failures |\n"
        f"|---|---|---|---|\n{rows}\n\n{FIXED}"
    )
    write_section("contract", "HTTP API contract (OpenAPI schema, schemathesis all checks)",
                  f"python -m benchmarks.contract --examples {args.examples}",
                  machine_description(), body)  # fmt: skip
    return run.returncode


if __name__ == "__main__":
    raise SystemExit(main())
