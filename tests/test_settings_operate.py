"""Settings for operating rlm (SPEC 8.1): cleanup mode, API tokens, alert webhook, log format."""

from __future__ import annotations

import pytest

from rlm_core.settings import ENV_VARIABLES, Settings, SettingsError

TOKEN = "0123456789abcdef0123456789abcdef"
WEBHOOK = "https://hooks.slack.com/services/T000/B000/very-secret-path"


def problems(env: dict[str, str]) -> list[str]:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    return info.value.problems


def test_defaults() -> None:
    settings = Settings.from_env({})
    assert settings.cleanup_mode is None  # decided from the stores (rlm_dagster.mode)
    assert settings.api_token is None and settings.api_admin_token is None
    assert settings.alert_webhook_url is None
    assert settings.log_format == "json"
    assert settings.dagster_url == "http://127.0.0.1:3000"


def test_every_new_variable_is_known() -> None:
    for name in (
        "RLM_CLEANUP_MODE",
        "RLM_API_TOKEN",
        "RLM_API_ADMIN_TOKEN",
        "RLM_ALERT_WEBHOOK_URL",
        "RLM_LOG_FORMAT",
        "RLM_DAGSTER_URL",
    ):
        assert name in ENV_VARIABLES


@pytest.mark.parametrize(("raw", "mode"), [("enforce", "enforce"), (" Observe ", "observe")])
def test_cleanup_mode_values(raw: str, mode: str) -> None:
    assert Settings.from_env({"RLM_CLEANUP_MODE": raw}).cleanup_mode == mode


def test_valid_operating_values() -> None:
    settings = Settings.from_env(
        {
            "RLM_API_TOKEN": TOKEN,
            "RLM_API_ADMIN_TOKEN": TOKEN[::-1],
            "RLM_ALERT_WEBHOOK_URL": WEBHOOK,
            "RLM_LOG_FORMAT": "TEXT",
            "RLM_DAGSTER_URL": "https://dagster.internal:8443/prefix",
        }
    )
    assert (settings.api_token, settings.api_admin_token) == (TOKEN, TOKEN[::-1])
    assert settings.alert_webhook_url == WEBHOOK
    assert settings.log_format == "text"
    assert settings.dagster_url == "https://dagster.internal:8443/prefix"


@pytest.mark.parametrize(
    ("variable", "raw", "allowed"),
    [
        ("RLM_CLEANUP_MODE", "dry", "allowed: enforce or observe"),
        ("RLM_LOG_FORMAT", "xml", "allowed: json or text"),
        ("RLM_DAGSTER_URL", "localhost:3000", "scheme http or https"),
    ],
)
def test_bad_values_name_variable_value_and_what_is_allowed(
    variable: str, raw: str, allowed: str
) -> None:
    [problem] = problems({variable: raw})
    assert problem.startswith(f"{variable}={raw!r} is invalid; ") and allowed in problem


@pytest.mark.parametrize("variable", ["RLM_API_TOKEN", "RLM_API_ADMIN_TOKEN"])
@pytest.mark.parametrize(
    "raw", ["short-secret", "a token with spaces in it!", "tökenwithumlaut12345"]
)
def test_weak_or_malformed_tokens_are_refused_without_showing_them(variable: str, raw: str) -> None:
    [problem] = problems({variable: raw})
    assert problem.startswith(f"{variable}=*** is invalid; ")
    assert "at least 16 printable ASCII characters without spaces" in problem
    assert raw not in problem


@pytest.mark.parametrize("raw", ["ftp://hooks.example/secret-path", "https://", "not a url secret"])
def test_bad_webhook_url_is_refused_without_showing_it(raw: str) -> None:
    [problem] = problems({"RLM_ALERT_WEBHOOK_URL": raw})
    assert problem.startswith("RLM_ALERT_WEBHOOK_URL=*** is invalid; ")
    assert "secret" not in problem


def test_secrets_never_appear_in_public_view_or_repr() -> None:
    settings = Settings.from_env(
        {
            "RLM_API_TOKEN": TOKEN,
            "RLM_API_ADMIN_TOKEN": TOKEN[::-1],
            "RLM_ALERT_WEBHOOK_URL": WEBHOOK,
        }
    )
    view = settings.public_view()
    assert view["api_token"] == view["api_admin_token"] == view["alert_webhook_url"] == "***"
    for text in (str(view), repr(settings)):
        assert TOKEN not in text and TOKEN[::-1] not in text and "very-secret-path" not in text


def test_empty_variables_count_as_unset() -> None:
    settings = Settings.from_env({"RLM_CLEANUP_MODE": "", "RLM_API_TOKEN": ""})
    assert settings.cleanup_mode is None and settings.api_token is None
