"""Submitting runs into the Dagster run queue from outside Dagster, through the webserver's
GraphQL API (Dagster's public way to do it: the run coordinator queues the run, the daemon
launches it by priority with the per-store limits of dagster.yaml)."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import urlsplit

import dagster as dg
import requests
from dagster_graphql import DagsterGraphQLClient, DagsterGraphQLClientError

from rlm_core.settings import redact_url

GRAPHQL_TIMEOUT_SECONDS = 30


class SubmitError(RuntimeError):
    """The run could not be queued; `unreachable` tells a down webserver from a refusal."""

    def __init__(self, message: str, unreachable: bool) -> None:
        super().__init__(message)
        self.unreachable = unreachable


class RunSubmitter(Protocol):
    """Queues one run of a job and returns its run id."""

    def submit(self, job_name: str, run_config: dg.RunConfig, tags: dict[str, str]) -> str:
        """Queue the run; raises SubmitError."""
        ...


class GraphQLSubmitter:
    """Queues runs through the Dagster webserver at RLM_DAGSTER_URL."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self._shown = redact_url(url)
        self._client = DagsterGraphQLClient(
            parts.hostname or "127.0.0.1",
            port_number=parts.port,
            use_https=parts.scheme == "https",
            timeout=GRAPHQL_TIMEOUT_SECONDS,
            path_prefix=parts.path.rstrip("/"),
        )

    def submit(self, job_name: str, run_config: dg.RunConfig, tags: dict[str, str]) -> str:
        """Queue the run through `launchPipelineExecution`; the coordinator sets it QUEUED."""
        try:
            return self._client.submit_job_execution(job_name, run_config=run_config, tags=tags)
        except requests.exceptions.RequestException as exc:
            raise SubmitError(
                f"the Dagster webserver at {self._shown} is unreachable "
                f"({type(exc).__name__}); set RLM_DAGSTER_URL",
                unreachable=True,
            ) from exc
        except DagsterGraphQLClientError as exc:
            raise SubmitError(_client_error(exc), unreachable=_is_connection(exc)) from exc


def _client_error(exc: DagsterGraphQLClientError) -> str:
    # The client's messages repeat the whole query and run config: only their first line goes out.
    first = str(exc.args[0]).splitlines()[0][:200] if exc.args else type(exc).__name__
    body: Any = getattr(exc, "body", None)
    detail = f": {body[:500]}" if isinstance(body, str) and body else ""
    return f"the Dagster webserver refused the run ({first}){detail}"


def _is_connection(exc: DagsterGraphQLClientError) -> bool:
    return isinstance(exc.__cause__, requests.exceptions.RequestException)
