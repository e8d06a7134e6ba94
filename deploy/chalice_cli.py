"""Run the Chalice CLI with the Lambda runtime pinned, instead of derived from this interpreter.

Chalice 1.34 sets every function's (and the managed layer's) ``Runtime`` from the *local*
interpreter (``Config.lambda_python_version``: 3.11 here), with no configuration key.  This wrapper
replaces that one property, so Chalice's own machinery uses the pinned runtime everywhere:
the template's ``Runtime``, the layer's ``CompatibleRuntimes``, and the dependency builder, which
then selects wheels for the Lambda ABI (``cp312``, manylinux) rather than for the local one.

    python -m deploy.chalice_cli deploy --stage dev            # chalice deploy, on python3.12
    python -m deploy.chalice_cli package --stage prod OUT      # what deploy.package runs

``LAMBDA_RUNTIME`` overrides the default (must be a runtime Chalice can build for).

``DEPLOY_ENV_FILE=PATH`` (a JSON object of strings, kept outside the repository) adds environment
variables to every function of the stage, over ``.chalice/config.json``: how a ``chalice deploy``
stage gets its ``WS_AUTH_*`` settings without committing them, and without turning
authentication on for the local gateway (which reads the stage config, not this file)::

    DEPLOY_ENV_FILE=~/.config/ws-rooms/dev.json python -m deploy.chalice_cli deploy --stage dev

``python -m deploy.package`` ignores it (the template takes its settings as stack parameters).
"""

from __future__ import annotations

import inspect
import json
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

#: The Lambda runtime the app ships on (Chalice tests and the app run on 3.11 locally; the code
#: uses nothing 3.12 removed, and the deployment package carries no compiled code of its own).
DEFAULT_RUNTIME = "python3.12"
SUPPORTED_RUNTIMES = ("python3.12", "python3.13", "python3.14")
#: Names a JSON file of extra environment variables for the stage (see the module docstring).
ENV_FILE_VARIABLE = "DEPLOY_ENV_FILE"


def runtime_from_env() -> str:
    runtime = os.environ.get("LAMBDA_RUNTIME") or DEFAULT_RUNTIME
    if runtime not in SUPPORTED_RUNTIMES:
        raise SystemExit(f"LAMBDA_RUNTIME={runtime!r}: expected one of {SUPPORTED_RUNTIMES}")
    return runtime


def pin_runtime(runtime: str) -> None:
    """Make Chalice build and describe functions for ``runtime`` (this process only)."""
    from chalice import __version__
    from chalice.config import Config
    from chalice.deploy.packager import BaseLambdaDeploymentPackager

    if not isinstance(Config.__dict__.get("lambda_python_version"), property):
        raise SystemExit(f"chalice {__version__}: Config.lambda_python_version is not a property;"
                         " deploy/chalice_cli.py needs updating")
    if runtime not in BaseLambdaDeploymentPackager._RUNTIME_TO_ABI:
        raise SystemExit(f"chalice {__version__} cannot build dependencies for {runtime}")
    Config.lambda_python_version = property(lambda self: runtime)  # type: ignore[method-assign,assignment]
    _fix_manylinux_download()
    # Chalice warns when the local interpreter differs from the Lambda runtime; that difference is
    # the point here, and the dependency builder already targets the Lambda ABI.
    warnings.filterwarnings("ignore", message="You are currently running python")


def _fix_manylinux_download() -> None:
    """Make Chalice's second-pass ``pip download`` target the Lambda Python, not the local one.

    Chalice 1.34 passes ``--abi cp312`` but no ``--python-version``, so pip (running on 3.11)
    rejects every ``cp312`` wheel and Chalice falls back to building the sdist for the *local*
    interpreter, then drops the package ("Could not install dependencies: cffi").  Same
    arguments as Chalice's, plus ``--python-version``.
    """
    from chalice.deploy.packager import PipRunner

    def download_manylinux_wheels(
        self: PipRunner, abi: str, packages: list[str], directory: str,
        platforms: list[str] | None = None,
    ) -> None:
        for package in packages:
            arguments = ["--only-binary=:all:", "--no-deps"]
            for platform in platforms or ["manylinux2014_x86_64"]:
                arguments.extend(["--platform", platform])
            arguments.extend(["--implementation", "cp", "--abi", abi,
                              "--python-version", abi[2:], "--dest", directory, package])
            self._execute("download", arguments)

    PipRunner.download_manylinux_wheels = download_manylinux_wheels  # type: ignore[method-assign]


def load_env_file(path: str | Path) -> dict[str, str]:
    """The variables in ``path``: a JSON object whose keys and values are all strings."""
    try:
        data = json.loads(Path(path).expanduser().read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"{ENV_FILE_VARIABLE}={path}: {exc}") from None
    if not isinstance(data, dict) or not all(
        isinstance(key, str) and key and isinstance(value, str) for key, value in data.items()
    ):
        raise SystemExit(f"{ENV_FILE_VARIABLE}={path}: expected a JSON object of strings,"
                         ' e.g. {"WS_AUTH_JWKS_URL": "https://..."}')
    return data


def overlay_environment(variables: Mapping[str, str]) -> None:
    """Add ``variables`` to every function's environment (this process only).

    They become Chalice's user-provided ``environment_variables``, the last layer
    ``Config.environment_variables`` merges (over the project, stage and function settings).
    """
    from chalice import __version__
    from chalice.cli.factory import CLIFactory

    original: Any = CLIFactory.create_config_obj
    if "user_provided_params" not in inspect.signature(original).parameters:
        raise SystemExit(f"chalice {__version__}: CLIFactory.create_config_obj takes no"
                         " user_provided_params; deploy/chalice_cli.py needs updating")
    extra = dict(variables)

    def create_config_obj(self: CLIFactory, *args: Any, **kwargs: Any) -> Any:
        # (chalice_stage_name, autogen_policy, api_gateway_stage, user_provided_params)
        given = kwargs.pop("user_provided_params", None) or (args[3:4] or [None])[0]
        params = dict(given or {})
        params["environment_variables"] = {**params.get("environment_variables", {}), **extra}
        return original(self, *args[:3], user_provided_params=params, **kwargs)

    CLIFactory.create_config_obj = create_config_obj  # type: ignore[method-assign]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``chalice ARGS`` with the pinned runtime; returns (or exits with) its status."""
    from botocore.exceptions import NoRegionError
    from chalice.cli import cli

    runtime = runtime_from_env()
    pin_runtime(runtime)
    args = list(sys.argv[1:] if argv is None else argv)
    print(f"[deploy] Lambda runtime pinned to {runtime}", file=sys.stderr)
    env_file = os.environ.get(ENV_FILE_VARIABLE)
    if env_file:
        variables = load_env_file(env_file)
        overlay_environment(variables)
        # Names only: the values may be secrets.
        print(f"[deploy] environment from {env_file}: {', '.join(sorted(variables)) or 'none'}",
              file=sys.stderr)
    try:
        cli.main(args=args, prog_name="chalice", obj={})  # exits with chalice's status
    except NoRegionError:
        print("No region configured: export AWS_DEFAULT_REGION or set a profile region.",
              file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
