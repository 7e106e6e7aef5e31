"""The published schema and the answers agree on the cases the issue named (the schemathesis run in
tests/fuzz/test_api_contract.py covers the rest)."""

from fastapi.testclient import TestClient

from tests.fuzz.contract_app import ADMIN_KEY, build_app

AUTH = {"authorization": f"Bearer {ADMIN_KEY}"}


def client(tmp_path) -> TestClient:
    return TestClient(build_app(tmp_path))


def test_every_error_status_is_documented_with_the_error_schema_and_no_422(tmp_path):
    schema = client(tmp_path).get("/openapi.json").json()
    for path, item in schema["paths"].items():
        for method, op in item.items():
            responses = op["responses"]
            assert "422" not in responses, (method, path)
            ref = "AnthropicError" if path.startswith("/v1/messages") else "OpenAIError"
            for status, response in responses.items():
                if status.startswith(("4", "5")):
                    body = response["content"]["application/json"]["schema"]
                    assert body == {"$ref": f"#/components/schemas/{ref}"}, (method, path, status)
    chat = schema["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "404", "413", "429", "503"} <= set(chat)
    assert "HTTPValidationError" not in schema["components"]["schemas"]


def test_an_undeclared_method_is_a_405_with_allow_listing_every_method_of_the_path(tmp_path):
    api = client(tmp_path)
    for headers in (AUTH, {}):  # before access control too
        r = api.request("TRACE", "/v1/files/file-x", headers=headers)
        assert r.status_code == 405 and r.json()["error"]["type"] == "invalid_request_error"
        assert set(r.headers["allow"].split(", ")) >= {"GET", "DELETE"}
    r = api.request("TRACE", "/v1/messages", headers=AUTH)
    assert r.status_code == 405 and r.json()["type"] == "error" and "POST" in r.headers["allow"]


def test_bad_form_fields_and_query_parameters_are_openai_400s_not_fastapi_422s(tmp_path):
    api = client(tmp_path)
    r = api.post("/v1/files", headers=AUTH, files={"file": ("in.jsonl", b"{}")},
                 data={"purpose": ""})  # fmt: skip
    assert r.status_code == 400 and r.json()["error"]["param"] == "purpose"
    r = api.get("/v1/files?limit=abc", headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]["param"] == "limit"
    assert "detail" not in r.json()


def test_a_schema_valid_batch_body_is_accepted(tmp_path):
    api = client(tmp_path)
    row = (b'{"custom_id": "a", "method": "POST", "url": "/v1/chat/completions", "body": '
           b'{"model": "auto", "messages": [{"role": "user", "content": "solve x"}]}}\n')  # fmt: skip
    file_id = api.post("/v1/files", headers=AUTH, files={"file": ("in.jsonl", row)},
                       data={"purpose": "batch"}).json()["id"]  # fmt: skip
    r = api.post("/v1/batches", headers=AUTH,
                 json={"input_file_id": file_id, "endpoint": "/v1/chat/completions",
                       "completion_window": "24h", "metadata": {"k": "v"}})  # fmt: skip
    assert r.status_code == 200, r.text
    r = api.post("/v1/batches", headers=AUTH, json={"input_file_id": file_id, "endpoint": "/x"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "endpoint"


def test_anthropic_surface_answers_access_errors_in_its_own_shape(tmp_path):
    r = client(tmp_path).post("/v1/messages", json={})
    assert r.status_code == 401
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "authentication_error"
