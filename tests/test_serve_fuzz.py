"""Property-based fuzzing of every operation in /openapi.json (schemathesis): no input may produce a 5xx.

Both schema-valid (positive) and schema-violating (negative) requests are generated, against the real server.
Bounded: 50 examples per operation and mode, well under a minute in all.
"""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from embergpt.serve.api_errors import is_openai_path

pytest_plugins = ["serve_fixtures"]

EXAMPLES = 50
GENERATION = {"POST /api/generate", "POST /v1/completions", "POST /v1/chat/completions"}


def fuzz(operation, mode: GenerationMode, base_url: str, seen: dict[str, set[int]]) -> None:
    """Send EXAMPLES generated requests to one operation; every answer must be < 500 and errors JSON."""

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=operation.as_strategy(generation_mode=mode))
    def check(case):
        response = case.call(base_url=base_url, timeout=60)
        seen.setdefault(operation.label, set()).add(response.status_code)
        assert response.status_code < 500, f"{case.method} {case.formatted_path}: {response.text[:300]}"
        if response.status_code >= 400:
            error = response.json().get("error")
            if is_openai_path(case.formatted_path):  # OpenAI's shape: {"error": {"message", "type", "param", "code"}}
                assert isinstance(error, dict) and isinstance(error.get("code"), str), response.text[:300]
            else:
                assert isinstance(error, str), response.text[:300]

    check()


@pytest.mark.slow
@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda m: m.value)
def test_no_request_gets_a_server_error(server_url, mode):
    schema = schemathesis.openapi.from_url(server_url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.label for op in operations} >= GENERATION
    seen: dict[str, set[int]] = {}
    for op in operations:
        try:
            fuzz(op, mode, server_url, seen)
        except Unsatisfiable:  # no way to violate the schema of an operation without inputs
            assert mode == GenerationMode.NEGATIVE and op.method.upper() == "GET", op.label
    assert set(seen) >= GENERATION
    if mode == GenerationMode.POSITIVE:
        assert any(200 in seen[label] for label in GENERATION)  # some requests got through to the model
