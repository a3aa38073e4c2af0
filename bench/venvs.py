"""Virtual environments for contenders that are not this repository's code.

``reference`` is the original ``tornadose==0.4.1`` from PyPI with a current
tornado 6.x.  It is created on first use under ``bench/.venvs/reference``; a
marker file records the requirements once the install succeeded, so an
interrupted install is redone.
"""

import shutil
import subprocess
import sys
from pathlib import Path

VENV_ROOT = Path(__file__).resolve().parent / ".venvs"

REQUIREMENTS = {
    "reference": ["tornadose==0.4.1", "tornado>=6,<7"],
}


def venv_python(name: str) -> str:
    """Return the python executable of venv ``name``, creating it if needed."""
    requirements = REQUIREMENTS[name]
    venv = VENV_ROOT / name
    python = venv / "bin" / "python"
    marker = venv / ".bench-ready"
    wanted = "\n".join(requirements)
    if marker.exists() and marker.read_text() == wanted:
        return str(python)
    if venv.exists():
        shutil.rmtree(venv)
    print(f"bench: creating venv {venv} with {' '.join(requirements)}", file=sys.stderr)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", *requirements], check=True
    )
    marker.write_text(wanted)
    return str(python)


if __name__ == "__main__":
    print(venv_python(sys.argv[1] if len(sys.argv) > 1 else "reference"))
