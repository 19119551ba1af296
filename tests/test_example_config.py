"""Following config/cluster.yaml as written (its pki commands, its default paths) gives a controller that starts."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess
from pathlib import Path

import yaml

from tests.proc_cluster import free_port_block
from tests.single_node import ControllerProcess, api_port, hactl_argv, http_get, single_node

EXAMPLE = Path(__file__).resolve().parent.parent / "config" / "cluster.yaml"
START_TIMEOUT = 90.0  # generous: two cores shared with other test runs


def test_following_the_example_config_starts_a_controller(tmp_path: Path) -> None:
    config = tmp_path / "cluster.yaml"
    shutil.copy(EXAMPLE, config)
    text = config.read_text()
    # The commands exactly as the comments give them, run where the comments say: the config file's directory.
    commands = [shlex.split(m.group(1)) for m in re.finditer(r"^\s*#\s+(hactl pki (?:init|issue) .*)$", text, re.M)]
    assert [c[:3] for c in commands] == [["hactl", "pki", "init"], ["hactl", "pki", "issue"]], commands
    for argv in commands:
        r = subprocess.run(hactl_argv(*argv[1:]), cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, f"{shlex.join(argv)}: {r.stderr}"

    # Only what running alone here needs changes. data_dir, token_file and the pki paths stay as the example has
    # them: relative to the copied file, so they are inside tmp_path.
    doc = single_node(yaml.safe_load(text), free_port_block(2))
    config.write_text(yaml.safe_dump(doc, sort_keys=False))

    with ControllerProcess(config, tmp_path / "controller.log") as ctl:
        ctl.wait_for(lambda: http_get(api_port(doc), "/health")[0] == 200, START_TIMEOUT, "GET /health 200")
        assert (tmp_path / "data" / "raft.db").exists()
        assert ctl.stop() == 0, ctl.output()[-4000:]
