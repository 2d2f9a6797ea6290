"""Install the Debian package into a throwaway Debian 12 root and use it there.

The root is a ``debootstrap --variant=minbase`` tree (cached under
``build/packaging/``) entered with ``chroot``: apt resolves the package's
dependencies from the Debian mirror and runs its maintainer scripts, as on a
real host, except that no systemd is running there. ``make test-packaging``
builds the package and runs this module with ``TOKEND_DEB`` set; without it,
or without root, the module is skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokend import __version__

pytestmark = [
    pytest.mark.timeout(900),
    pytest.mark.skipif(
        not os.environ.get("TOKEND_DEB"),
        reason="needs TOKEND_DEB=path/to/tokend.deb (make test-packaging)",
    ),
    pytest.mark.skipif(os.geteuid() != 0, reason="chroot and debootstrap need root"),
]

CACHE = Path(__file__).resolve().parent.parent / "build" / "packaging"
MIRROR = os.environ.get("TOKEND_DEBIAN_MIRROR", "http://deb.debian.org/debian")
CHROOT_ENV = {
    "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/root",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
}
# chroot hygiene (policy-rc.d(8)): nothing the package runs may start services.
POLICY_RC_D = "#!/bin/sh\nexit 101\n"


def cached_base_tree() -> Path:
    """Return a minimal bookworm tree, made by debootstrap on first use."""
    base = CACHE / "bookworm-minbase"
    if base.is_dir():
        return base
    partial = CACHE / "bookworm-minbase.partial"
    shutil.rmtree(partial, ignore_errors=True)
    CACHE.mkdir(parents=True, exist_ok=True)
    if shutil.which("debootstrap") is None:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "debootstrap"], check=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(partial), MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    for deb in (partial / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
    # Renamed only when complete: an interrupted debootstrap is not a cache.
    partial.rename(base)

    return base


def run_in_root(
    root: Path, script: str, *, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run a shell script chrooted into ``root`` with /proc and apt's cache mounted.

    The mounts live in a private mount namespace, so they vanish with it.
    """
    archives = CACHE / "apt-archives"
    (archives / "partial").mkdir(parents=True, exist_ok=True)
    enter = (
        'mount -t proc proc "$1/proc" && '
        'mount --bind "$2" "$1/var/cache/apt/archives" && '
        'exec chroot "$1" /bin/sh -euc "$3"'
    )
    result = subprocess.run(
        ["unshare", "--mount", "--propagation", "private"]
        + ["sh", "-euc", enter, "enter", str(root), str(archives), script],
        env=CHROOT_ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if check and result.returncode != 0:
        pytest.fail(
            f"in the throwaway root, exit {result.returncode}: {script}\n"
            f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
        )

    return result


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Yield a fresh copy of the base tree with the package installed by apt."""
    deb = Path(os.environ["TOKEND_DEB"]).resolve()
    tree = tmp_path_factory.mktemp("debian") / "root"
    subprocess.run(["cp", "-a", str(cached_base_tree()), str(tree)], check=True)
    policy = tree / "usr/sbin/policy-rc.d"
    policy.write_text(POLICY_RC_D)
    policy.chmod(0o755)
    shutil.copy(deb, tree / "tmp" / deb.name)
    run_in_root(tree, f"apt-get update -qq && apt-get install -y -qq /tmp/{deb.name}")
    yield tree
    shutil.rmtree(tree.parent)


def test_version_is_the_packaged_one(root: Path) -> None:
    result = run_in_root(root, "/usr/bin/tokend --version")

    assert result.stdout.strip() == f"tokend {__version__}"


def test_check_accepts_the_example_config(root: Path) -> None:
    result = run_in_root(root, "tokend check")

    assert result.stdout.startswith("configuration ok: /etc/tokend/tokend.toml\n")


def test_check_runs_as_the_service_user(root: Path) -> None:
    """The user that sysusers created can run tokend: nothing is root-only."""
    passwd = run_in_root(root, "getent passwd tokend").stdout
    result = run_in_root(root, "runuser -u tokend -- tokend check")

    assert passwd.strip().endswith(":/nonexistent:/usr/sbin/nologin")
    assert "configuration ok" in result.stdout


def test_example_config_is_a_conffile(root: Path) -> None:
    result = run_in_root(root, "dpkg-query -W -f='${Conffiles}' tokend")

    assert result.stdout.split()[0] == "/etc/tokend/tokend.toml"


def test_unit_and_system_config_are_installed(root: Path) -> None:
    unit = (root / "lib/systemd/system/tokend.service").read_text()

    assert "ExecStart=/usr/bin/tokend run" in unit
    assert (root / "usr/lib/sysusers.d/tokend.conf").is_file()
    assert (root / "usr/lib/tmpfiles.d/tokend.conf").is_file()


def test_unit_passes_systemd_analyze_verify(root: Path) -> None:
    """Every command and path the unit names exists in the installed system."""
    result = run_in_root(root, "systemd-analyze verify tokend.service", check=False)

    assert result.returncode == 0, result.stderr


def test_unit_is_left_disabled(root: Path) -> None:
    """The operator enables the unit once the config and secret ID are there."""
    wants = root / "etc/systemd/system/multi-user.target.wants/tokend.service"

    assert not wants.exists()


def test_manpage_is_installed(root: Path) -> None:
    result = run_in_root(root, "zcat /usr/share/man/man8/tokend.8.gz")

    assert result.stdout.startswith(".TH TOKEND 8 ")
    assert ".SS check" in result.stdout


def test_postinst_byte_compiles_the_environment(root: Path) -> None:
    site = root / "opt/tokend/lib/python3.11/site-packages"

    assert list((site / "tokend/__pycache__").glob("cli.cpython-311.pyc"))


def test_reinstall_then_purge_leaves_nothing(root: Path) -> None:
    """Runs last: the upgrade path of the scripts, then removal and purge."""
    deb = Path(os.environ["TOKEND_DEB"]).name
    run_in_root(root, f"dpkg -i /tmp/{deb} && tokend --version")
    run_in_root(root, "apt-get purge -y -qq tokend")

    assert not (root / "opt/tokend").exists()
    assert not (root / "etc/tokend").exists()
    assert not os.path.lexists(root / "usr/bin/tokend")
    assert not (root / "lib/systemd/system/tokend.service").exists()
