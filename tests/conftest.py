"""Session set-up: Jupyter, IPython, Chromium and the JAX cache write into a temporary directory.

The variables are set when pytest loads this file, before any test imports Jupyter, so kernels,
Voila servers and browsers started by the tests inherit them and nothing is written under $HOME.
Kernel specs are still found: Jupyter also searches sys.prefix/share/jupyter, where the
virtual environment installs its python3 kernel.
"""

import os
import shutil
import tempfile

import pytest

_REDIRECTED = {
    "JUPYTER_DATA_DIR": "jupyter-data",
    "JUPYTER_RUNTIME_DIR": "jupyter-runtime",
    "JUPYTER_CONFIG_DIR": "jupyter-config",
    "IPYTHONDIR": "ipython",
    "XDG_CONFIG_HOME": "config",
    "XDG_CACHE_HOME": "cache",
}

SESSION_DIR = tempfile.mkdtemp(prefix="resnet-limits-tests-")
_previous_environment = {name: os.environ.get(name) for name in _REDIRECTED}
for _name, _folder in _REDIRECTED.items():
    _path = os.path.join(SESSION_DIR, _folder)
    os.makedirs(_path, exist_ok=True)
    os.environ[_name] = _path


def pytest_unconfigure(config):
    for name, value in _previous_environment.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    shutil.rmtree(SESSION_DIR, ignore_errors=True)


@pytest.fixture(scope="session")
def session_dir() -> str:
    """The temporary directory that contains this session's Jupyter, IPython and cache folders."""
    return SESSION_DIR
