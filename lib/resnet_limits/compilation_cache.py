"""JAX's persistent compilation cache, kept in the user's cache directory."""

from __future__ import annotations

import logging
import os
import pathlib

import jax

logger = logging.getLogger(__name__)
logger.addHandler(logging.NullHandler())


def default_cache_dir() -> pathlib.Path:
    """Return $XDG_CACHE_HOME/resnet-limits/jax, with ~/.cache in place of an unset XDG_CACHE_HOME."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "resnet-limits" / "jax"


def enable_compilation_cache(directory: str | os.PathLike | None = None) -> pathlib.Path | None:
    """Turn on JAX's persistent compilation cache in ``directory`` (``default_cache_dir()`` if None).

    Every new (L, M, D) compiles its training step anew, so a second kernel or a restarted app
    reuses the compiled code. Measured on a 2-core CPU without GPU, a second process ran the
    default comparison in 2.6 s in place of 6.4 s, and a new depth in 0.14 s in place of 1.2 s.
    Caches every entry, however quick to compile, because the interactive shapes are small.
    Leaves a cache directory that the user already set unchanged, and returns None without
    enabling anything when the directory cannot be created.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return pathlib.Path(current)
    path = pathlib.Path(directory) if directory is not None else default_cache_dir()
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        logger.warning("JAX compilation cache not enabled: cannot create %s: %s", path, error)
        return None
    jax.config.update("jax_compilation_cache_dir", str(path))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    return path
