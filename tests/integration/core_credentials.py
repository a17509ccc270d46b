"""Credentials of a test core, for the Python tests and benchmarks: `gflex-core init`, the
environment its nodes and clients read (GFLEX_CORE_CERT, GFLEX_API_KEY: the operator's),
and a join token (GFLEX_TOKEN) once the core answers."""

import os
import subprocess
import time


def init_core(bin_dir, data_dir):
    """Makes the core's credentials in data_dir; returns the environment for its nodes and
    clients (a copy of this process's, with the core's bundle and the operator's key)."""
    # Under umask 077, as the core's service runs it (UMask=0077): the files handed to nodes
    # and clients must still be readable by others (a node's service runs as its own user).
    subprocess.run([f"{bin_dir}/gflex-core", "init", "--data-dir", data_dir], check=True,
                   stdout=subprocess.DEVNULL, umask=0o077)
    for name in ("core-cert.pem", "tls/ca.crt", "tls/core.crt"):
        mode = os.stat(os.path.join(data_dir, name)).st_mode & 0o777
        if mode != 0o644:
            raise RuntimeError(f"gflex-core init under umask 077 made {name} mode {mode:o}, "
                               "not 644: other users cannot read it")
    env = dict(os.environ)
    env["GFLEX_CORE_CERT"] = os.path.join(data_dir, "core-cert.pem")
    with open(os.path.join(data_dir, "operator.key")) as f:
        env["GFLEX_API_KEY"] = f.read().strip()
    return env


def add_join_token(bin_dir, core, env, tier="core", limit_s=20):
    """Waits (limit_s at most) for the core at `core` to answer, then puts a new join token
    of `tier` into env as GFLEX_TOKEN."""
    deadline = time.time() + limit_s
    while True:
        r = subprocess.run([f"{bin_dir}/gflex-core", "token", "create", "--tier", tier,
                            "--core", core, "--log-level", "off"],
                           env=env, capture_output=True, text=True)
        if r.returncode == 0:
            env["GFLEX_TOKEN"] = r.stdout.strip()
            return
        if time.time() > deadline:
            raise RuntimeError(f"the core at {core} made no join token: {r.stderr.strip()}")
        time.sleep(0.2)
