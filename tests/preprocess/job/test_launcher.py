"""The job through Ray's cluster launcher on this machine: `ray up` / `ray submit` / `ray down` over real SSH.

docker/ray-local.yaml with head_ip 127.0.0.1. The "node" is a throwaway Linux user reached through a
test-only sshd (Debian's openssh-server) on a free port of 127.0.0.1: its own home (where `ray submit`
puts the script), its own Ray temp dir, and `ray stop` (which `ray up` and `ray down` run) can only stop
that user's processes, not any other Ray on the machine. Needs root (a user, apt-get, sshd).
"""

from __future__ import annotations

import getpass
import hashlib
import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import psutil
import pytest
import yaml

from shards.manifest import read_manifest
from shards.verify import verify_output
from tests.preprocess.job.conftest import shard_bytes
from tests.preprocess.job.test_cluster import free_port

ROOT = Path(__file__).resolve().parents[3]
SSHD = Path("/usr/sbin/sshd")


def missing_tools() -> list[str]:
    missing = [] if SSHD.exists() else ["openssh-server"]
    return missing + ([] if shutil.which("rsync") else ["rsync"])


def install_debian_packages(packages: list[str]) -> None:
    """apt-get install without starting the services the packages ship (no sshd on port 22)."""
    policy = Path("/usr/sbin/policy-rc.d")
    made_policy = not policy.exists()
    if made_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    try:
        subprocess.run(["apt-get", "update", "-qq"], env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(["apt-get", "install", "-y", "-qq", "--no-install-recommends", *packages], env=env,
                       check=True, capture_output=True, timeout=900)
    finally:
        if made_policy:
            policy.unlink()


def prerequisites_or_skip() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: it adds a throwaway user as the SSH 'node' and runs its own sshd")
    missing = missing_tools()
    if missing and not shutil.which("apt-get"):
        pytest.skip(f"{', '.join(missing)} missing and no apt-get to install them")
    if missing:
        try:
            install_debian_packages(missing)
        except subprocess.CalledProcessError as error:
            pytest.skip(f"apt-get install {' '.join(missing)} failed ({error.stderr.decode()[-300:]})")
    assert not missing_tools(), missing_tools()


def wait_for_port(port: int, process: subprocess.Popen, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{what} exited with {process.returncode}: {process.stderr.read()[-2000:]}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"{what} did not open port {port} within {timeout} s")


class Node:
    """A throwaway user with a home of its own, reachable by key over a loopback-only sshd."""

    def __init__(self, base: Path):
        self.base = base
        self.user = f"mcldray{secrets.token_hex(3)}"
        self.home = base / "h"
        self.key = base / "launcher" / "id_ed25519"
        self.port = free_port()
        self.sshd: subprocess.Popen | None = None
        self.created = False
        self.granted: list[tuple[Path, int, bool]] = []  # folders given an ACL entry: (folder, mode, had an ACL)

    @property
    def cluster_name(self) -> str:
        return f"mcld-test-{self.user}"

    def create(self) -> None:
        subprocess.run(["useradd", "--home-dir", str(self.home), "--create-home", "--shell", "/bin/bash",
                        "--user-group", self.user], check=True, capture_output=True)
        self.created = True
        # "*": no password, but not a locked account (sshd refuses "!" accounts without PAM)
        subprocess.run(["usermod", "-p", "*", self.user], check=True, capture_output=True)
        entry = pwd.getpwnam(self.user)
        self.key.parent.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mcld-test", "-f", str(self.key)],
                       check=True)
        ssh_dir = self.home / ".ssh"
        ssh_dir.mkdir(mode=0o700)
        (ssh_dir / "authorized_keys").write_text(self.key.with_suffix(".pub").read_text())
        (ssh_dir / "authorized_keys").chmod(0o600)
        for path in (ssh_dir, ssh_dir / "authorized_keys"):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start_sshd(self) -> None:
        host_key = self.base / "sshd" / "host_ed25519"
        host_key.parent.mkdir(mode=0o700)
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)], check=True)
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege-separation directory
        options = {
            "Port": self.port, "ListenAddress": "127.0.0.1", "HostKey": host_key,
            "PidFile": host_key.parent / "sshd.pid", "AllowUsers": self.user, "UsePAM": "no",
            "PasswordAuthentication": "no", "KbdInteractiveAuthentication": "no", "PermitRootLogin": "no",
            "AuthorizedKeysFile": ".ssh/authorized_keys", "StrictModes": "yes",
        }
        command = [str(SSHD), "-D", "-e", "-f", "/dev/null"]
        for name, value in options.items():
            command += ["-o", f"{name}={value}"]
        self.sshd = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        wait_for_port(self.port, self.sshd, "sshd")

    def grant_traversal(self, target: Path) -> None:
        """Lets the node's user reach `target` (this test's venv, whose packages the node imports): a
        checkout in a private folder (a `mktemp -d` clone is 0700) would otherwise end `ray up` with
        "Failed to setup head". Each folder on the way that the user cannot enter gets an ACL entry
        u:<user>:--x; stop() puts back the folder's mode and, where it had none before, drops the ACL."""
        for folder in [*reversed(target.parents), target]:
            if subprocess.run(["test", "-x", str(folder)], user=self.user).returncode == 0:
                continue
            if not shutil.which("setfacl"):
                try:
                    install_debian_packages(["acl"])
                except subprocess.CalledProcessError as error:
                    pytest.skip(f"{folder} is closed to other users and setfacl (Debian's acl) could not be "
                                f"installed ({error.stderr.decode()[-300:]})")
            had_acl = bool(subprocess.run(["getfacl", "--skip-base", "--omit-header", str(folder)],
                                          capture_output=True, text=True, check=True).stdout.strip())
            self.granted.append((folder, folder.stat().st_mode & 0o7777, had_acl))
            subprocess.run(["setfacl", "-m", f"u:{self.user}:--x", str(folder)], check=True, capture_output=True)
        if subprocess.run(["test", "-r", str(target / "ray" / "__init__.py")], user=self.user).returncode:
            pytest.skip(f"{target}: this test's packages are not readable by other users (installed under a "
                        f"restrictive umask?); the SSH node imports them from there")

    def ssh_shim(self) -> Path:
        """An `ssh` first on the launcher's PATH that adds the port (Ray's SSH runner has no port option)."""
        shim = self.base / "launcher" / "bin"
        shim.mkdir()
        (shim / "ssh").write_text(f'#!/bin/sh\nexec /usr/bin/ssh -p {self.port} "$@"\n')
        (shim / "ssh").chmod(0o755)
        return shim

    def stop(self) -> None:
        """Everything this test started: the user's processes (Ray head, workers, driver), the SSH
        connection masters the launcher left behind (ControlPersist), the sshd and its sessions."""
        uid = pwd.getpwnam(self.user).pw_uid if self.created else None
        doomed = []
        for process in psutil.process_iter(["uids", "cmdline"]):
            try:
                if uid is not None and process.info["uids"].real == uid:
                    doomed.append(process)
                elif process.info["cmdline"] and str(self.key) in " ".join(process.info["cmdline"]):
                    doomed.append(process)
            except (psutil.NoSuchProcess, psutil.AccessDenied, TypeError):
                continue
        if self.sshd is not None:
            try:
                doomed += psutil.Process(self.sshd.pid).children(recursive=True)
            except psutil.NoSuchProcess:
                pass
            self.sshd.terminate()
            try:
                self.sshd.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.sshd.kill()
        for process in doomed:
            try:
                process.kill()
            except psutil.NoSuchProcess:
                continue
        psutil.wait_procs(doomed, timeout=10)
        # the launcher's SSH control sockets for this cluster (Ray names the folder after hashes)
        user_hash = hashlib.sha256(getpass.getuser().encode()).hexdigest()[:10]
        cluster_hash = hashlib.sha256(self.cluster_name.encode()).hexdigest()[:10]
        shutil.rmtree(f"/tmp/ray_ssh_{user_hash}/{cluster_hash}", ignore_errors=True)
        try:
            os.rmdir(f"/tmp/ray_ssh_{user_hash}")  # only if no other cluster of this user uses it
        except OSError:
            pass
        for folder, mode, had_acl in reversed(self.granted):
            subprocess.run(["setfacl", "-x" if had_acl else "-b", *([f"u:{self.user}"] if had_acl else []),
                            str(folder)], capture_output=True)
            os.chmod(folder, mode)
        if self.created:
            subprocess.run(["userdel", "--remove", self.user], capture_output=True)


NODE_ENV_SCRIPT = """set -e
# The node's venv sees this test's environment (the same packages, no download) and the synced checkout.
site=$("$HOME/mcld-venv/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
printf '%s\\n%s\\n' "$HOME/mcld-data" "{packages}" > "$site/mcld-test-env.pth"
cat > "$HOME/mcld-venv/bin/ray" <<'RAY'
#!/bin/sh
exec "$HOME/mcld-venv/bin/python" -c "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())" "$@"
RAY
chmod +x "$HOME/mcld-venv/bin/ray"
# Ray's temp dir in this user's home: /tmp/ray may belong to another user's Ray on this machine.
mkdir -p "$HOME/t"
grep -qs RAY_TMPDIR "$HOME/.bashrc" || echo 'export RAY_TMPDIR=$HOME/t' >> "$HOME/.bashrc"
"""


def launcher_config(node: Node, *, token: Path, ports: dict[str, int]) -> dict:
    """docker/ray-local.yaml with this machine's values filled in; only the two pip installs are swapped.

    Instead of `pip install` torch and the checkout into the node's venv (a multi-GB download per run),
    a .pth file there points at this test's environment and the synced checkout (same CPython minor
    version), and a `ray` script runs Ray's CLI from it. The venv, its activation in ~/.bashrc and the
    import check are the config's own commands.
    """
    config = yaml.safe_load((ROOT / "docker" / "ray-local.yaml").read_text())
    config["cluster_name"] = node.cluster_name
    config["provider"].update(head_ip="127.0.0.1", worker_ips=[])
    config["auth"] = {"ssh_user": node.user, "ssh_private_key": str(node.key)}
    config["file_mounts"]["~/.ray/auth_token"] = str(token)
    script = node.base / "launcher" / "node-env.sh"
    script.write_text(NODE_ENV_SCRIPT.format(packages=sysconfig.get_paths()["purelib"]))
    config["file_mounts"]["~/node-env.sh"] = str(script)
    installs = [i for i, c in enumerate(config["setup_commands"]) if "pip install" in c]
    assert len(installs) == 2, "the config's install steps changed: update this test"
    config["setup_commands"][installs[0]:installs[-1] + 1] = ["sh ~/node-env.sh"]
    head = config["head_start_ray_commands"]
    assert head[-1].count("--port=6379") == 1
    head[-1] = head[-1].replace("--port=6379", (
        f"--port={ports['gcs']} --node-ip-address=127.0.0.1 --num-cpus=2 --dashboard-port={ports['dashboard']} "
        f"--ray-client-server-port={ports['client']} --min-worker-port={ports['workers']} "
        f"--max-worker-port={ports['workers'] + 40}"))
    return config


def plain_local_run(reference_run: Path, tmp_path: Path) -> Path:
    """The same command on this session's local Ray (conftest.ray_local, its own temp dir: never another
    user's cluster), plus --resume over a copy of the session's demo run's feature cache: the default
    settings differ from that run's only in how the samples are shuffled and cut into shards (seed, budget),
    which no feature depends on, so the features come from the cache (test_job's rerun test shows a cached
    run writes the same bytes as a computed one) and only the shards are written here."""
    from preprocess.build_shards import main
    from preprocess.job.features import FEATURES_DIR

    plain = tmp_path / "plain"
    shutil.copytree(reference_run / FEATURES_DIR, plain / FEATURES_DIR)
    assert main(["--models", "tiny", "--out", str(plain), "--no-progress", "--resume"]) == 0
    stats = json.loads((plain / "stats.json").read_text())
    assert stats["images_computed"] == 0 and stats["images_cached"] == 8, stats
    return plain


@pytest.mark.slow
def test_ray_up_submit_down_on_localhost(tmp_path, model_cache, reference_run):
    prerequisites_or_skip()
    ray = shutil.which("ray", path=os.path.dirname(sys.executable))
    assert ray, "the ray CLI is installed with the project"
    base = Path(tempfile.mkdtemp(prefix="mr-", dir="/tmp"))  # short: Ray's socket paths have a length limit
    base.chmod(0o755)
    node = Node(base)
    out = base / "out"  # written by the node's user, read back here
    try:
        try:
            node.create()
            node.grant_traversal(Path(sysconfig.get_paths()["purelib"]))
            node.start_sshd()
            shim = node.ssh_shim()
            token = base / "launcher" / "auth_token"
            token.write_text(secrets.token_hex(16))
            token.chmod(0o600)
            ports = {"gcs": free_port(), "dashboard": free_port(), "client": free_port(),
                     "workers": 20000 + secrets.randbelow(20000)}
            config = base / "launcher" / "ray-local.yaml"
            config.write_text(yaml.safe_dump(launcher_config(node, token=token, ports=ports)))
            out.mkdir()
            os.chown(out, pwd.getpwnam(node.user).pw_uid, -1)
            # the launcher's cluster state and config cache in this test's folder, not /tmp/ray
            env = {**os.environ, "PATH": f"{shim}:{os.path.dirname(sys.executable)}:{os.environ.get('PATH', '')}",
                   "RAY_TMPDIR": str(base / "launcher"), "TMPDIR": str(base / "launcher")}

            def launcher(*args: str, timeout: float = 900) -> subprocess.CompletedProcess:
                return subprocess.run([ray, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                                      timeout=timeout)

            def check(done: subprocess.CompletedProcess) -> None:
                what = " ".join(done.args[1:3])
                assert done.returncode == 0, f"{what}:\n{done.stdout[-6000:]}\n{done.stderr[-4000:]}"

            try:
                check(launcher("up", "-y", "--no-config-cache", str(config)))
                # exactly what docs/CLUSTER.md tells users to run
                check(launcher("submit", str(config), "preprocess/build_shards.py", "--",
                               "--models", "tiny", "--out", str(out), "--no-progress"))
                assert (node.home / "build_shards.py").exists(), "ray submit runs the script from the head's home"
            finally:
                down = launcher("down", "-y", str(config), timeout=300)
            check(down)
        finally:
            node.stop()
        plain = plain_local_run(reference_run, tmp_path)
        report = verify_output(str(out), progress=False)
        assert report.ok, report.problems
        assert not read_manifest(str(out)).counts.problems()
        assert shard_bytes(out) == shard_bytes(plain)
    finally:
        shutil.rmtree(base, ignore_errors=True)
