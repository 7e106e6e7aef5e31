"""`GET /v1/models`: the rows as OpenAI's list, paged as Anthropic's clients ask (`limit`,
`after_id`, `before_id`)."""

from __future__ import annotations

from typing import Any

from experts.errors import InvalidRequestError

__all__ = ["model_page", "model_page_parameters"]


def model_page_parameters(ids: list[str]) -> dict:
    """The paging query parameters `model_page` reads, as the published contract states them."""
    cursor = {"type": "string", "enum": ids}
    return {"parameters": [
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
        {"name": "after_id", "in": "query", "required": False, "schema": cursor},
        {"name": "before_id", "in": "query", "required": False, "schema": cursor},
    ]}  # fmt: skip


def model_page(rows: list[dict], query: Any) -> dict:
    """`/v1/models` as OpenAI's list, with Anthropic's page fields (`has_more`, `first_id`,
    `last_id`). Without `limit`, `after_id` and `before_id`, every row (OpenAI's clients do not
    page); with any of them, Anthropic's paging (default limit 20): the rows after `after_id`
    and before `before_id`, the first `limit` of them, or the last with only `before_id`."""
    ids = [row["id"] for row in rows]
    cursors = {}
    for name in ("after_id", "before_id"):
        value = query.get(name)
        if value is not None and value not in ids:
            raise InvalidRequestError(f"'{name}' {value!r} is not a model id; the ids are "
                                      f"{', '.join(ids)}", param=name)  # fmt: skip
        cursors[name] = value
    limit = query.get("limit")
    if limit is not None and not (limit.isdigit() and 1 <= int(limit) <= 1000):
        raise InvalidRequestError(f"'limit' must be an integer from 1 to 1000, got {limit!r}",
                                  param="limit")  # fmt: skip
    if limit is None and not any(cursors.values()):
        page, more = rows, False
    else:
        size = int(limit or 20)
        after, before = cursors["after_id"], cursors["before_id"]
        window = rows[ids.index(after) + 1 if after else 0 : ids.index(before) if before else None]
        page = window[-size:] if before and not after else window[:size]
        more = len(window) > size
    return {"object": "list", "data": page, "has_more": more,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None}  # fmt: skip
