"""The Kubernetes manifests of deploy/k8s, read as the tests need them: one file's documents, the
generated ConfigMap's inputs (release/config.env), and the rendered output of kustomize when the
machine has it (`kubectl kustomize` or `kustomize build`)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import PROJECT

K8S = PROJECT / "deploy" / "k8s"


def manifest(path: str) -> dict[str, Any]:
    """The first document of deploy/k8s/<path>."""
    document: dict[str, Any] = next(yaml.safe_load_all((K8S / path).read_text()))
    return document


def documents(path: str) -> list[dict[str, Any]]:
    return [document for document in yaml.safe_load_all((K8S / path).read_text()) if document]


def deploy_config(directory: Path = K8S) -> dict[str, str]:
    """The ConfigMap's data, as kustomize's configMapGenerator reads release/config.env."""
    config = {}
    for line in (directory / "release" / "config.env").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            config[key.strip()] = value
    return config


def kustomize_command() -> list[str] | None:
    if kubectl := shutil.which("kubectl"):
        return [kubectl, "kustomize"]
    if kustomize := shutil.which("kustomize"):
        return [kustomize, "build"]
    return None


def render(directory: Path) -> list[dict[str, Any]]:
    """`kustomize build <directory>`'s documents."""
    command = kustomize_command()
    assert command is not None
    result = subprocess.run(
        [*command, str(directory)], capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    return [document for document in yaml.safe_load_all(result.stdout) if document]
