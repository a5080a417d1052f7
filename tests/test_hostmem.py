"""Host-memory settings for CPU training (aekit.system.hostmem), each in a fresh process: torch
reads its huge-page setting once, at its first CPU allocation."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc/Linux only")

PROBE = """
import json, os
from aekit.system import hostmem
applied = hostmem.for_cpu_training()
print(json.dumps({"applied": applied, "env": os.environ.get("THP_MEM_ALLOC_ENABLE")}))
"""


def probe(**env_extra) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("AEKIT_MALLOC", "THP_MEM_ALLOC_ENABLE")}
    out = subprocess.run([sys.executable, "-c", PROBE], env={**env, **env_extra},
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_huge_pages_asked_for_by_default():
    assert probe() == {"applied": True, "env": "1"}


def test_opt_out_and_caller_setting_win():
    assert probe(AEKIT_MALLOC="system") == {"applied": False, "env": None}
    assert probe(THP_MEM_ALLOC_ENABLE="0") == {"applied": False, "env": "0"}


def test_ae_train_sets_it_before_torch_allocates(tmp_path):
    # torch reads the variable once, at its first CPU allocation, so the command itself must
    # set it before the process group and the data exist (the library's setup() calling it
    # too would be too late for the command). The caller of the first call is recorded.
    code = ("import os, sys; from aekit.cmds import train as t; from aekit.system import hostmem;"
            "real = hostmem.for_cpu_training; calls = [];"
            "hostmem.for_cpu_training = lambda: (calls.append(sys._getframe(1).f_code.co_filename), real())[1];"
            "sys.argv=['ae-train','missing.h5','-o',os.path.join(sys.argv[1],'m.pt'),'--device','cpu'];"
            "import atexit; atexit.register(lambda: print('FIRST', calls[0] if calls else None, flush=True));"
            "t.main()")
    p = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True)
    first = [ln for ln in p.stdout.splitlines() if ln.startswith("FIRST ")]
    assert first and first[0].replace("\\", "/").endswith("cmds/train.py"), (p.stdout, p.stderr)
