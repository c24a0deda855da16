import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def proxy_body_path(tmp_path_factory) -> Path:
    """The proxy body written once per test session."""
    from occfusion_core.body.proxy import write_proxy_smpl

    return write_proxy_smpl(tmp_path_factory.mktemp("body") / "proxy_smpl.pkl")


@pytest.fixture(scope="session")
def proxy_body(proxy_body_path):
    from occfusion_core.body.model import load_body_model

    return load_body_model(proxy_body_path)


@pytest.fixture
def one_torch_thread():
    """Run a test on one torch thread: toy-sized tensor work only gets contention from more."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def make_model(proxy_body):
    """make_model(**flags) -> a fresh HumanGaussians on the proxy body (built once, then copied)."""
    import copy

    from occfusion_core.gaussians.human import HumanGaussians

    built = {}

    def make(**flags):
        key = tuple(sorted(flags.items()))
        if key not in built:
            built[key] = HumanGaussians(proxy_body, **flags)
        return copy.deepcopy(built[key])

    return make


def run_killable(cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """Run a command in its own process group; on timeout the whole group is killed."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}\n{out[-5000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, out, "")


def snakemake_bin() -> str:
    return str(Path(sys.executable).with_name("snakemake"))
