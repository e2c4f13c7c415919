"""The services of infra/compose.yaml as processes on this machine, with the same settings.

A service's ``command``, ``environment`` and volumes are read from the compose file and
translated, never restated: ``${VAR}`` from the env file, service addresses
(``prefect-db:5432``) to 127.0.0.1 ports, ``0.0.0.0`` to 127.0.0.1, container paths to
folders, and the images' executables (``prefect``, ``mlflow``, ``hal``) to this interpreter's.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hal_core.settings import PROJECT_ROOT

COMPOSE_FILE = PROJECT_ROOT / "infra" / "compose.yaml"
ENV_EXAMPLE = PROJECT_ROOT / "infra" / ".env.example"
IMAGE_WORKDIR = "/opt/hal"  # WORKDIR and HAL_PROJECT_DIR of docker/Dockerfile.*
EXECUTABLES = {
    "prefect": [sys.executable, "-m", "prefect"],
    "mlflow": [sys.executable, "-m", "mlflow"],
    "hal": [sys.executable, "-m", "hal_cli"],
}
_VARIABLE = re.compile(r"\$\{(\w+)(?::?([-?])([^}]*))?\}")


def compose() -> dict:
    return yaml.safe_load(COMPOSE_FILE.read_text())


def env_file(path: Path = ENV_EXAMPLE) -> dict[str, str]:
    """``NAME=value`` lines of an env file (the template users copy to infra/.env)."""
    values = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


@dataclass
class Here:
    """Where compose's names lead on this machine."""

    variables: dict[str, str]
    addresses: dict[str, str]  # "prefect-db:5432" -> "127.0.0.1:54321"
    ports: dict[str, str]  # container port -> local port, for --port and URLs
    folders: dict[str, Path] = field(default_factory=dict)  # volume name -> folder

    def render(self, text: str) -> str:
        def variable(match: re.Match) -> str:
            name, kind, fallback = match.groups()
            if name in self.variables and (self.variables[name] or kind != "-"):
                return self.variables[name]
            if kind == "-":
                return fallback
            raise KeyError(f"{COMPOSE_FILE}: ${{{name}}} is not set ({fallback or 'required'})")

        text = _VARIABLE.sub(variable, text)
        for address, local in self.addresses.items():
            text = text.replace(address, local)
        text = text.replace("0.0.0.0", "127.0.0.1")
        for port, local in self.ports.items():
            text = re.sub(rf"(?<![\w.]){port}\b", local, text)
        return text

    def paths(self, service: dict) -> dict[str, str]:
        """Container path -> folder here, for every volume of a service and the workdir."""
        mounts = {IMAGE_WORKDIR: str(PROJECT_ROOT)}
        for volume in service.get("volumes", []):
            source, target = self.render(volume).split(":")[:2]
            mounts[target] = str(self.folders.get(source, source))
        return mounts

    def _translate_paths(self, text: str, mounts: dict[str, str]) -> str:
        for target in sorted(mounts, key=len, reverse=True):
            text = re.sub(rf"(?<![\w/]){re.escape(target)}(?=/|$|\W)", mounts[target], text)
        return text

    def command(self, name: str) -> list[str]:
        service = compose()["services"][name]
        mounts = self.paths(service)
        parts = [self._translate_paths(self.render(str(p)), mounts) for p in service["command"]]
        return [*EXECUTABLES[parts[0]], *parts[1:]]

    def environment(self, name: str) -> dict[str, str]:
        service = compose()["services"][name]
        mounts = self.paths(service)
        return {
            key: self._translate_paths(self.render(str(value)), mounts)
            for key, value in (service.get("environment") or {}).items()
        }
