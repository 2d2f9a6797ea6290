"""Watch the configuration files and ask for a reload when one changes."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

if TYPE_CHECKING:
    import watchfiles

logger = logging.getLogger(__name__)

DEBOUNCE_MS = 500


def is_config_file(config: Path, changed: Path) -> bool:
    """True for the main file, ``conf.d`` and ``conf.d/*.toml``; not temp files.

    ``conf.d`` itself counts: files written into a directory just created can
    land before the watch on it is in place.
    """
    if changed in (config, config.parent / "conf.d"):
        return True
    return changed.parent == config.parent / "conf.d" and changed.suffix == ".toml"


async def watch_config(
    config: Path, on_change: Callable[[], None], stop: anyio.Event
) -> None:
    """Call ``on_change`` after the config files change, until ``stop`` is set.

    The directory is watched, not the file, so an editor that saves by
    renaming a new file over the old one is seen too. Set ``stop`` before
    cancelling: the watcher's thread only looks at it, and a plain
    cancellation would wait for its timeout (seconds).
    """
    # Imported when the watch starts, after a restart that reused every token
    # has sent READY=1: with multiprocessing behind it, it costs 5-10 ms.
    try:
        import watchfiles
    except ImportError as exc:  # a broken install; SIGHUP still reloads
        logger.warning("not watching %s for changes: %s", config.parent, exc)
        return

    directory = config.parent.resolve()
    target = directory / config.name

    def relevant(change: watchfiles.Change, path: str) -> bool:
        return is_config_file(target, Path(path))

    try:
        async for changes in watchfiles.awatch(
            directory,
            watch_filter=relevant,
            debounce=DEBOUNCE_MS,
            ignore_permission_denied=True,
            stop_event=stop,
            # The watcher's thread looks at the stop event this often (ms);
            # the default, 50, wakes an idle daemon 20 times a second. Each
            # look takes the GIL: at 500 ms the watcher made 2.6 of an idle
            # daemon's 3 wakeups a second. A SIGTERM sets the event first, so
            # the watcher takes at most 1 s of the 2 s a stop may take.
            step=1000,
        ):
            names = sorted({Path(path).name for _, path in changes})
            logger.info("configuration changed files=%s; reloading", ",".join(names))
            on_change()
    except (OSError, RuntimeError) as exc:
        # Reload on SIGHUP still works; say why watching stopped.
        logger.warning("not watching %s for changes: %s", directory, exc)
