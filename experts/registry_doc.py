"""The registry reference, generated from the pydantic models' field descriptions.

python -m experts.registry_doc      # markdown tables, pasted into the README
"""

from __future__ import annotations

import sys

from pydantic import BaseModel

from experts.registry import Registry


def _default(field) -> str:
    if field.is_required():
        return "required"
    if field.default_factory is not None:
        return "(see below)" if isinstance(field.default_factory, type) else "(computed)"
    return f"`{field.default!r}`"


def reference_markdown(root: type[BaseModel] = Registry) -> str:
    """One table per model class reachable from `root`, in the order they are first met."""
    seen: list[tuple[str, type[BaseModel]]] = []
    queue: list[tuple[str, type[BaseModel]]] = [("(top level)", root)]
    while queue:
        path, model = queue.pop(0)
        if any(m is model for _, m in seen):
            continue
        seen.append((path, model))
        for name, field in model.model_fields.items():
            for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
                inner = getattr(arg, "__args__", (arg,))
                for candidate in (arg, *inner):
                    if isinstance(candidate, type) and issubclass(candidate, BaseModel):
                        queue.append(
                            (name if path == "(top level)" else f"{path}.{name}", candidate)
                        )
    out = []
    for path, model in seen:
        out.append(
            f"**`{path}`** ({model.__name__})\n\n| field | default | meaning |\n|---|---|---|"
        )
        for name, field in model.model_fields.items():
            desc = (field.description or "").replace("|", "\\|").replace("\n", " ")
            out.append(f"| `{name}` | {_default(field)} | {desc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    sys.stdout.write(reference_markdown())
