"""`posmesh keys`: rotation from the command line publishes a key that signs only after the lead."""

from __future__ import annotations

import os
import subprocess
import sys


def posmesh(data_dir, *args: str) -> str:
    env = {**os.environ, "POSMESH_DATA_DIR": str(data_dir), "JWT_KEY_PUBLISH_LEAD_SECONDS": "300"}
    result = subprocess.run([sys.executable, "-m", "stack.cli", *args], env=env,
                            capture_output=True, text=True, timeout=60, check=True)
    return result.stdout


def test_keys_list_creates_the_first_key_once(tmp_path):
    first = posmesh(tmp_path, "keys", "list")
    second = posmesh(tmp_path, "keys", "list")

    assert len(first.splitlines()) == 1
    assert second == first


def test_keys_rotate_publishes_a_second_key_that_signs_after_the_lead(tmp_path):
    posmesh(tmp_path, "keys", "list")

    out = posmesh(tmp_path, "keys", "rotate").splitlines()

    assert out[0].startswith("published key ")
    keys = out[1:]
    assert len(keys) == 2
    new_kid = out[0].split()[2].rstrip(";")
    new_line = next(line for line in keys if line.startswith(new_kid))
    published, signs_from = new_line.split("published ")[1].split("  signs from ")
    assert signs_from > published
    assert not (tmp_path / "keys").stat().st_mode & 0o077
