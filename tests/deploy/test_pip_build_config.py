"""deploy/pip_build_config.py: what of the host's pip configuration the image build gets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "deploy" / "pip_build_config.py"

LISTING = """\
global.cert='/etc/ssl/certs/ca-certificates.crt'
global.extra-index-url='file:///opt/pypi/simple https://mirror.example/simple'
global.find-links='/opt/wheels'
global.constraint='/etc/xdg/pip/constraints.txt'
global.index-url='https://pypi.org/simple'
:env:.index-url='https://user:token@mirror.example/pypi/simple'
:env:.default-timeout='180'
"""


def _run(listing: str, folder: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(folder)],
        input=listing,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", **env},
    )


def test_reachable_settings_and_the_cert_go_to_the_build(tmp_path):
    cert = tmp_path / "ca.pem"
    cert.write_text("-----BEGIN CERTIFICATE-----\n")
    out = tmp_path / "secrets"
    out.mkdir()
    res = _run(LISTING.replace("/etc/ssl/certs/ca-certificates.crt", str(cert)), out)
    assert res.returncode == 0, res.stderr
    conf = (out / "pip.conf").read_text().splitlines()
    # The environment wins over the files, as in pip; file:// indexes, local
    # find-links and the host's constraints name this machine and stay out.
    assert conf == [
        "[global]",
        "index-url = https://user:token@mirror.example/pypi/simple",
        "extra-index-url = https://mirror.example/simple",
        "timeout = 180",
        "cert = /run/secrets/pip-cert",
    ]
    assert (out / "pip-cert").read_text() == cert.read_text()


def test_no_configuration_gives_an_empty_build_configuration(tmp_path):
    res = _run("", tmp_path)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "pip.conf").read_text() == "[global]\n"
    assert (tmp_path / "pip-cert").read_text() == ""


def test_a_cert_from_the_environment_when_pip_names_none(tmp_path):
    cert = tmp_path / "bundle.pem"
    cert.write_text("bundle")
    out = tmp_path / "secrets"
    out.mkdir()
    assert _run("", out, REQUESTS_CA_BUNDLE=str(cert)).returncode == 0
    assert (out / "pip.conf").read_text().endswith("cert = /run/secrets/pip-cert\n")
    assert (out / "pip-cert").read_text() == "bundle"


def test_usage_is_one_line():
    res = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True)
    assert res.returncode == 2
    assert res.stderr == "usage: pip config list | pip_build_config.py FOLDER\n"
