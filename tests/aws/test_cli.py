"""The silo's command line: one-line errors through argparse, no runpy warning, a stack that is not running named."""

import socket
import subprocess
import sys

import numpy as np
import pytest

from fedsim import aws


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def dead_stack(tmp_path):
    """A stack config whose endpoint is a loopback port nobody listens on."""
    endpoint = f"http://127.0.0.1:{_free_port()}"
    config = aws.StackConfig(region="us-east-1", bucket="b", table="t", stream_arn="", topic_arn="", state_machine_arn="",
                             silo_queues={"a": f"{endpoint}/123456789012/a"}, endpoint_url=endpoint,
                             access_key="testing", secret_key="testing")
    path = tmp_path / "stack.json"
    path.write_text(config.to_json())
    np.savez(tmp_path / "a.npz", x=np.zeros([2, 5], np.float32), y=np.zeros([2], np.int32))
    return config, path, tmp_path / "a.npz"


def _silo(*arguments):
    return subprocess.run([sys.executable, "-W", "error::RuntimeWarning", "-m", "fedsim.aws.silo", *map(str, arguments)],
                          capture_output=True, text=True, timeout=120)


def test_a_stack_that_is_not_running_is_one_line(dead_stack):
    config, path, data = dead_stack
    with pytest.raises(aws.StackUnreachableError, match=r"the stack at http://127\.0\.0\.1:\d+ does not answer; is it running\?"):
        aws.SiloAgent(config, "a", None)
    finished = _silo("--stack-config", path, "--silo-id", "a", "--data", data)
    assert finished.returncode == 1
    assert "Traceback" not in finished.stderr and "RuntimeWarning" not in finished.stderr
    assert finished.stderr.strip().splitlines()[-1].endswith("does not answer; is it running?")


@pytest.mark.parametrize("arguments, message", [
    (["--silo-id", "a", "--data", "missing.npz"], "--data missing.npz: silo data file 'missing.npz' not found"),
    (["--silo-id", "z", "--data", "DATA"], "silo 'z' has no queue in this stack"),
])
def test_command_line_errors_go_through_argparse(dead_stack, arguments, message):
    _, path, data = dead_stack
    finished = _silo("--stack-config", path, *[data if a == "DATA" else a for a in arguments])
    assert finished.returncode == 2, finished.stderr
    assert "Traceback" not in finished.stderr
    assert message in finished.stderr
