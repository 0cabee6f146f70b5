"""``.ci/install-debian-packages``: the first step of ``./dev demo``, ``./dev test`` and CI.

Run for real against this machine's dpkg database, from a copy of the script with a
package list of the test's choosing."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.support.server import REPO

SCRIPT = REPO / ".ci" / "install-debian-packages"


def _copy(tmp_path: Path, packages: list[str]) -> Path:
    (tmp_path / ".ci").mkdir()
    shutil.copy2(SCRIPT, tmp_path / ".ci" / SCRIPT.name)
    (tmp_path / ".ci" / "debian-packages.txt").write_text("# a comment\n" + "\n".join(packages) + "\n")
    return tmp_path / ".ci" / SCRIPT.name


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "VETTING_SKIP_DEBIAN_PACKAGES"}
    env.update(extra)
    return env


pytestmark = pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="needs a Debian/Ubuntu machine (dpkg-query)")


def test_everything_installed_is_a_quiet_no_op(tmp_path):
    script = _copy(tmp_path, ["bash", "coreutils  # trailing comment"])
    cp = subprocess.run([str(script)], capture_output=True, text=True, timeout=60, env=_env())
    assert (cp.returncode, cp.stdout, cp.stderr) == (0, "", "")


@pytest.mark.root
def test_not_root_stops_with_the_one_command_to_run(request):
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to run the script as another user")
    # pytest's tmp_path lies under a root-only directory: the other user needs its own
    shared = Path(tempfile.mkdtemp(prefix="vetting-ci-"))
    request.addfinalizer(lambda: shutil.rmtree(shared, ignore_errors=True))
    shared.chmod(0o755)
    script = _copy(shared, ["bash", "vetting-no-such-package-xyz"])
    cp = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", str(script)],
        capture_output=True, text=True, timeout=60, env=_env(),
    )
    assert cp.returncode == 1
    assert "missing Debian packages: vetting-no-such-package-xyz" in cp.stderr
    assert "sudo apt-get update && sudo apt-get install -y --no-install-recommends vetting-no-such-package-xyz" in cp.stderr
    assert " bash" not in cp.stderr.split("missing Debian packages:")[1].splitlines()[0]


def test_without_apt_it_names_the_packages_and_the_escape_hatch(tmp_path):
    script = _copy(tmp_path, ["bash", "fio"])
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "sed", "tr", "dirname", "grep", "id"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    cp = subprocess.run([str(script)], capture_output=True, text=True, timeout=60, env=_env(PATH=str(bin_dir)))
    assert cp.returncode == 1
    assert "not a Debian/Ubuntu machine" in cp.stderr and "bash fio" in cp.stderr
    assert "VETTING_SKIP_DEBIAN_PACKAGES=1" in cp.stderr
    cp = subprocess.run([str(script)], capture_output=True, text=True, timeout=60,
                        env=_env(PATH=str(bin_dir), VETTING_SKIP_DEBIAN_PACKAGES="1"))
    assert cp.returncode == 0
