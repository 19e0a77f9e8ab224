"""Runs schemathesis against the running system from the OpenAPI document the edge serves: every
operation, a few positive and negative cases each (derandomized, so a run is repeatable), checked
for no 5xx, documented statuses and content types, and bodies that conform to the schemas.

Cases are drawn per operation in three sets: positive with the path's ids being real ones of the
caller's restaurant (so requests reach the rules and real records come back), positive with
generated ids, and negative. The streaming route is read up to its first line.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode, Response
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from stack.openapi import NDJSON

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
STREAM_READ_SECONDS = 10.0


@schemathesis.deserializer(NDJSON)
def _first_line(ctx, response: Response):
    """A JSON-lines body is checked by its first line (a live stream is read no further)."""
    return json.loads(response.content.split(b"\n", 1)[0])


@dataclass
class Summary:
    operations: int = 0
    cases: int = 0
    failures: list[str] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    by_operation: dict[str, Counter] = field(default_factory=dict)
    without_cases: list[str] = field(default_factory=list)  # (operation, mode) with no case

    def lines(self) -> list[str]:
        spread = ", ".join(f"{status}: {count}" for status, count in sorted(self.statuses.items()))
        return [f"schemathesis: {self.operations} operations, {self.cases} cases, "
                f"{len(self.failures)} failures",
                f"statuses: {spread}",
                *(f"no {what} cases can be generated" for what in self.without_cases)]

    def per_operation(self) -> list[str]:
        return [f"{label}: " + ", ".join(f"{status} x{count}" for status, count in sorted(counts.items()))
                for label, counts in self.by_operation.items()]


@dataclass(frozen=True)
class Target:
    base_url: str
    ca_file: str
    token: str
    real_ids: dict[str, str]  # path parameter -> an id of the caller's restaurant
    fresh_token: Callable[[requests.Session], str]  # for operations that end the session they use
    session_ending: frozenset[str]  # operationIds


def draw(strategy, examples: int) -> list[Case]:
    cases: list[Case] = []

    @given(strategy)
    @settings(max_examples=examples, derandomize=True, database=None, deadline=None,
              phases=[Phase.generate], suppress_health_check=list(HealthCheck))
    def collect(case: Case) -> None:
        cases.append(case)

    collect()
    return cases


def _stream(case: Case, target: Target, session: requests.Session, headers: dict) -> Response:
    """The response to a streaming route, its body read up to the first line."""
    kwargs = case.as_transport_kwargs(base_url=target.base_url, headers=headers)
    kwargs.pop("timeout", None)
    started = time.monotonic()
    with session.request(**kwargs, stream=True, timeout=STREAM_READ_SECONDS) as reply:
        content = next(reply.iter_lines(), b"") if reply.status_code == 200 else reply.content
        return Response(reply.status_code,
                        {name.lower(): [value] for name, value in reply.headers.items()},
                        content, reply.request, time.monotonic() - started, verify=True)


def run(document: dict, target: Target, examples: int) -> Summary:
    schema = schemathesis.openapi.from_dict(document)
    summary = Summary()
    with requests.Session() as session:
        # Trust the dev CA only; REQUESTS_CA_BUNDLE in the environment would override it.
        session.trust_env = False
        session.verify = target.ca_file
        for result in schema.get_all_operations():
            operation = result.ok()
            summary.operations += 1
            names = [parameter.name for parameter in operation.path_parameters]
            real = {name: target.real_ids[name] for name in names if name in target.real_ids}
            sets = [("positive, real ids", GenerationMode.POSITIVE, real),
                    ("positive", GenerationMode.POSITIVE, None),
                    ("negative", GenerationMode.NEGATIVE, None)]
            for label, mode, path_parameters in sets:
                if label == "positive, real ids" and not real:
                    continue
                try:
                    cases = draw(operation.as_strategy(generation_mode=mode,
                                                       path_parameters=path_parameters), examples)
                except Unsatisfiable:  # nothing to break: no parameters, no body
                    summary.without_cases.append(f"{label} {operation.label}")
                    continue
                for case in cases:
                    _check(case, label, target, session, summary)
    return summary


def _check(case: Case, label: str, target: Target, session: requests.Session,
           summary: Summary) -> None:
    operation = case.operation
    token = (target.fresh_token(session) if operation.definition.raw.get("operationId")
             in target.session_ending else target.token)
    headers = {"authorization": f"Bearer {token}"}
    summary.cases += 1
    try:
        if NDJSON in operation.definition.raw["responses"]["200"].get("content", {}):
            response = _stream(case, target, session, headers)
        else:
            response = case.call(base_url=target.base_url, session=session, headers=headers,
                                 verify=target.ca_file)
    except requests.RequestException as exc:
        summary.failures.append(f"{operation.label} [{label}]: no answer: {exc!r}\n    "
                                + case.as_curl_command(base_url=target.base_url))
        return
    summary.statuses[response.status_code] += 1
    summary.by_operation.setdefault(operation.label, Counter())[response.status_code] += 1
    try:
        case.validate_response(response, checks=CHECKS, headers=headers)
    except FailureGroup as failures:
        for failure in failures.exceptions:
            summary.failures.append(
                f"{operation.label} [{label}] {response.status_code}: {failure.title}: "
                f"{str(failure.message).strip()[:600]}\n    body: {response.content[:300]!r}\n    "
                + case.as_curl_command(base_url=target.base_url))
