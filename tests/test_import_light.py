"""`import tapernn` stays light: networkx (0.2 s of the import on the AMD EPYC of stop 49, half
of it) loads only when a networkx view is asked for."""

import subprocess
import sys


def _run(code: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_import_tapernn_does_not_import_networkx():
    """On 3fd1ba7 tapernn.views and tapernn.export.diagram imported it at module level."""
    assert _run("import sys, tapernn; print('networkx' in sys.modules)") == "False"


def test_the_networkx_views_still_import_it_when_asked():
    code = (
        "import sys, numpy as np, tapernn as tn\n"
        "g = tn.trace(lambda a, b: tn.tanh(a * b), np.ones(3), np.ones(3))\n"
        "nxg = g.to_networkx()\n"
        "data = tn.export.to_json(g)\n"
        "print('networkx' in sys.modules, nxg.number_of_nodes(), len(data['nodes']))"
    )
    loaded, nodes, json_nodes = _run(code).split()
    assert loaded == "True" and int(nodes) == int(json_nodes) >= 4
