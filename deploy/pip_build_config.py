"""The host's pip configuration, as the image build needs it (deploy/build-image.sh).

Reads ``pip config list`` (every file pip reads and the ``PIP_*`` environment) on
stdin and writes, into the folder given as the one argument:

- ``pip.conf``: the settings that reach an index from inside the build (the index
  and extra index URLs, trusted hosts, proxy, timeouts, retries), with ``cert``
  pointing at the secret below;
- ``pip-cert``: the CA bundle pip trusts here (a mirror's or a proxy's certificate
  authority), empty when pip is left to its own.

Both are handed to ``podman build`` / ``docker build`` as build secrets: pip reads
them during the build and no layer keeps them (an index URL may carry a token).
What names a file of this machine (``file://`` indexes, local find-links, a
constraints file) is left out: the build cannot see it, and the lock file pins
every package.
"""

from __future__ import annotations

import ast
import os
import shutil
import sys
from pathlib import Path

#: Settings that carry over; any other (constraint, find-links to a folder...) names this host.
CARRIED = ("index-url", "extra-index-url", "trusted-host", "proxy", "timeout", "retries")
#: Where the Dockerfile mounts the CA bundle secret.
CERT_IN_BUILD = "/run/secrets/pip-cert"
#: pip's precedence, lowest first (``pip config list`` names the variant of each line).
SECTIONS = {"global": 0, "install": 1, "wheel": 1, ":env:": 2}


def read_settings(listing: str) -> dict[str, str]:
    """``pip config list`` output -> {setting: value}, the winning variant's value."""
    ranked: dict[str, tuple[int, str]] = {}
    for line in listing.splitlines():
        key, sep, raw = line.partition("=")
        section, _, name = key.rpartition(".")
        if not sep or section not in SECTIONS:
            continue
        value = ast.literal_eval(raw) if raw[:1] in "'\"" else raw
        if name == "default-timeout":
            name = "timeout"
        if name not in ranked or SECTIONS[section] >= ranked[name][0]:
            ranked[name] = (SECTIONS[section], str(value))
    return {name: value for name, (_, value) in ranked.items()}


def reachable(value: str) -> str:
    """The space-separated URLs of ``value`` a build can reach (no file:// or paths)."""
    return " ".join(u for u in value.split() if u.startswith(("http://", "https://")))


def build_config(settings: dict[str, str], cert: str | None) -> str:
    """The ``pip.conf`` text for the build."""
    lines = ["[global]"]
    for name in CARRIED:
        value = settings.get(name, "")
        if name.endswith("index-url"):
            value = reachable(value)
        if value:
            lines.append(f"{name} = {value}")
    if cert:
        lines.append(f"cert = {CERT_IN_BUILD}")
    return "\n".join(lines) + "\n"


def host_cert(settings: dict[str, str]) -> str | None:
    """The CA bundle pip uses on this host: its ``cert`` setting, else the one
    requests would take from the environment; None when none is set or it is absent."""
    for candidate in (
        settings.get("cert"),
        os.environ.get("REQUESTS_CA_BUNDLE"),
        os.environ.get("SSL_CERT_FILE"),
    ):
        if candidate and Path(candidate).is_file():
            return candidate
    return None


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: pip config list | pip_build_config.py FOLDER", file=sys.stderr)
        return 2
    out = Path(argv[1])
    settings = read_settings(sys.stdin.read())
    cert = host_cert(settings)
    (out / "pip.conf").write_text(build_config(settings, cert))
    if cert:
        shutil.copyfile(cert, out / "pip-cert")
    else:
        (out / "pip-cert").write_text("")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
