"""The image itself (deploy/Dockerfile, built by deploy/build-image.sh): the
installed project, its user, no compiler, nothing of the build's pip secrets."""

from __future__ import annotations

from importlib.metadata import version

from container_image import podman


def run_in(image, *command: str) -> str:
    res = podman("run", "--rm", "--network", "host", image.tag, *command)
    assert res.returncode == 0, f"{' '.join(command)}: {res.stderr.strip()}"
    return res.stdout


def test_xray_version_as_the_images_own_user(image):
    assert run_in(image, "xray", "--version") == f"xray-pipeline {version('xray-pipeline')}\n"
    assert run_in(image, "id", "-u") == "10001\n"


def test_no_compiler_and_no_build_secret_in_the_image(image):
    found = run_in(image, "sh", "-c", "command -v gcc cc c++ make || true")
    assert found == "", f"a compiler in the final stage: {found}"
    # The host's pip configuration and CA bundle were build secrets: not in a layer.
    assert run_in(image, "sh", "-c", "ls /run/secrets 2>/dev/null || true") == ""
    settings = run_in(image, "pip", "config", "list").split()
    assert settings == [":env:.no-cache-dir='1'"], settings  # the image's own ENV only
