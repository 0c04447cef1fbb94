"""Users' private work folders: ``<user_work_root>/<local account>/``, 0700, owned by them.

The root folder is the manager's (0711: users reach their own folder by name but cannot list
the others); each user's folder is made by the manager and handed over with ``chown``. A
folder that exists but is a symlink, or belongs to someone else, is refused rather than
reused. Every folder above must be searchable by the users (``o+x``).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from .errors import UserProcessError
from .identity import LocalUser

log = logging.getLogger(__name__)


def unreachable_ancestor(path: Path) -> Path | None:
    """The first folder on the way to ``path`` that other users cannot search, if any."""
    path = Path(os.path.abspath(path))
    for folder in [*reversed(path.parents), path]:
        try:
            mode = folder.stat().st_mode
        except FileNotFoundError:
            return None  # made later, by us, searchable
        if not mode & stat.S_IXOTH:
            return folder
    return None


def prepare_root(root: Path) -> None:
    """Make the root of users' folders (0711) and warn if users cannot reach it."""
    root.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        os.chmod(root, 0o711)
    blocked = unreachable_ancestor(root)
    if blocked is not None:
        log.warning("users' work folders under %s are out of their reach: %s is not searchable "
                    "by other users (chmod o+x %s, or set user_work_root to a folder they can "
                    "reach)", root, blocked, blocked)


def user_folder(root: Path, user: LocalUser) -> Path:
    """``root/<account>``: made 0700 and owned by ``user`` if new, checked if not."""
    folder = root / user.name
    try:
        os.mkdir(folder, 0o700)
        created = True
    except FileExistsError:
        created = False
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise UserProcessError(f"{folder} is not a folder (a symlink?); refusing to use it")
    if created:
        if os.geteuid() == 0:
            os.chown(folder, user.uid, user.gid)
        os.chmod(folder, 0o700)
    elif st.st_uid != user.uid:
        raise UserProcessError(f"{folder} belongs to uid {st.st_uid}, not {user.name} "
                               f"({user.uid}); refusing to use it")
    return folder


__all__ = ["prepare_root", "unreachable_ancestor", "user_folder"]
