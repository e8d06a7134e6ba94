"""Fixtures for the local gateway tests: gateway subprocesses for the fixture projects."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path

import pytest

from localgateway.testing import Gateway, running_gateway

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
ECHO = FIXTURES / "echo"
POST_IN_CONNECT = FIXTURES / "post_in_connect"

StartGateway = Callable[..., AbstractContextManager[Gateway]]


@pytest.fixture(scope="session")
def start_gateway() -> StartGateway:
    """``start_gateway(project_dir, extra_args=(), env=None)``: a context manager."""
    return running_gateway


@pytest.fixture(scope="session")
def echo_record_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("echo") / "records.jsonl"


def _env_with(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("CONNECTIONS_STORE", None)
    env.update(extra)
    return env


@pytest.fixture(scope="session")
def echo_gateway(echo_record_file: Path, tmp_path_factory: pytest.TempPathFactory
                 ) -> Iterator[Gateway]:
    """One gateway for the echo fixture project, shared by the tests with default settings."""
    env = _env_with(ECHO_RECORD_FILE=str(echo_record_file))
    with running_gateway(str(ECHO), env=env, extra_args=["--env-file", "local.env"]) as gateway:
        yield gateway


@pytest.fixture
def gateway_with(tmp_path: Path) -> Callable[..., AbstractContextManager[Gateway]]:
    """A dedicated echo gateway with extra flags; its records go to ``tmp_path/records.jsonl``."""

    def start(*extra_args: str, project: Path = ECHO) -> AbstractContextManager[Gateway]:
        env = _env_with(ECHO_RECORD_FILE=str(tmp_path / "records.jsonl"))
        return running_gateway(str(project), extra_args=list(extra_args), env=env)

    return start
