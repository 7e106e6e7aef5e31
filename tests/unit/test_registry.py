import pickle

import pytest
import yaml

from experts.errors import RegistryError
from experts.registry import MMLU_PRO_SKILLS, load_registry, parse_registry

MINIMAL = {"experts": [{"name": "a", "model": "m"}]}


def test_embedded_default_is_valid_and_names_two_tiny_models():
    registry = load_registry()
    assert [e.name for e in registry.experts] == ["smollm2-135m", "gemma3-270m"]
    assert registry.skills == MMLU_PRO_SKILLS
    assert {v.name for v in registry.virtual_models} >= {"auto"}
    assert all(e.model.startswith("builtin:") for e in registry.experts)


def test_auto_is_always_a_model():
    registry = parse_registry(MINIMAL | {"virtual_models": [{"name": "cheap", "cost_weight": 5}]})
    assert [v.name for v in registry.virtual_models] == ["auto", "cheap"]


def test_unknown_key_names_field_and_fix(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"experts": [{"name": "a", "model": "m", "replica": 2}]}))
    with pytest.raises(RegistryError) as info:
        load_registry(path)
    msg = str(info.value)
    assert str(path) in msg and "experts.0.replica" in msg and "unknown key" in msg


def test_unknown_skill_lists_known_skills():
    with pytest.raises(RegistryError) as info:
        parse_registry({"experts": [{"name": "a", "model": "m", "skills": {"mth": 0.9}}]})
    assert "lists skill 'mth'" in str(info.value) and "math" in str(info.value)


@pytest.mark.parametrize(
    ("expert", "fragment"),
    [
        ({"name": "a", "model": "m", "skills": {"math": 1.5}}, "probability"),
        ({"name": "a", "model": "m", "replicas": 0}, "replicas"),
        ({"name": "a", "model": "m", "backend": "openai"}, "base_url"),
        ({"name": "a", "model": "m", "backend": "tgi"}, "backend"),
        ({"name": "bad name!", "model": "m"}, "names are"),
        ({"model": "m"}, "required"),
        ({"name": "a", "model": "m", "capabilities": {"tool_strict_level": "schema"}},
         "tool_strict_level"),
        ({"name": "a", "model": "m", "backend": "openai", "base_url": "http://h/v1",
          "capabilities": {"tool_parser": "x", "tool_strict_level": "parameter"}},
         "applies to hosted"),
    ],
)
def test_bad_values_fail_with_the_field(expert, fragment):
    with pytest.raises(RegistryError) as info:
        parse_registry({"experts": [expert]})
    assert fragment in str(info.value)


def test_duplicate_experts_and_unknown_virtual_members():
    with pytest.raises(RegistryError, match="used twice"):
        parse_registry({"experts": [{"name": "a", "model": "m"}, {"name": "a", "model": "n"}]})
    with pytest.raises(RegistryError, match="lists expert 'b'"):
        parse_registry(MINIMAL | {"virtual_models": [{"name": "v", "experts": ["b"]}]})


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(RegistryError, match="not found"):
        load_registry(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("experts: [\n  - name: a\n   model: x")
    with pytest.raises(RegistryError, match="not valid YAML at line"):
        load_registry(bad)


def test_registry_error_pickles_with_its_fields():
    err = RegistryError("boom", param="experts")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is RegistryError and again.message == "boom" and again.param == "experts"
    assert again.to_openai()["error"]["code"] == "invalid_registry"


def test_competence_matrix_uses_priors_and_defaults():
    registry = parse_registry(
        {
            "experts": [
                {"name": "a", "model": "m", "skills": {"math": 0.9}, "default_competence": 0.2}
            ]
        }
    )
    row = registry.competence_matrix()[0]
    assert row[registry.skills.index("math")] == 0.9
    assert row[registry.skills.index("law")] == 0.2


def test_every_registry_field_is_documented():
    from experts.registry_doc import reference_markdown

    rows = [line for line in reference_markdown().splitlines() if line.startswith("| `")]
    assert len(rows) > 40
    undocumented = [row.split("|")[1].strip() for row in rows if not row.split("|")[3].strip()]
    assert undocumented == []


def test_readme_field_reference_is_the_generated_one():
    from pathlib import Path

    from experts.registry_doc import reference_markdown

    readme = (Path(__file__).parents[2] / "README.md").read_text()
    start = readme.index("<details><summary>Field reference</summary>")
    pasted = readme[start:readme.index("</details>", start)].split("\n", 1)[1].strip()
    assert pasted == reference_markdown().strip(), "run: python -m experts.registry_doc"
