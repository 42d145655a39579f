"""Every route of the seed inventory, implemented for the demo's scratch project.

Git, files, tests, backups and encryption are real (in the scratch directory
only). Cluster, cloud, container and GitHub tools are simulated: the demo
never acts on a real system, even when the tool is installed.
No view here is decorated: the demo tracks them all from the inventory
(``RunTracking(app, actions=ACTIONS)``), exactly as a user's app would.

The views live in one module per area, all on one blueprint
(:mod:`._routes_base`); importing this module registers them all.
"""

from __future__ import annotations

from . import (
    _routes_backup,
    _routes_checks,
    _routes_files,
    _routes_git,
    _routes_pages,
    _routes_simulated,
    _routes_vault,
)
from ._routes_base import actions_blueprint
from ._routes_vault import DEFAULT_PASSPHRASE

__all__ = ["DEFAULT_PASSPHRASE", "actions_blueprint"]

#: The area modules, imported for the views they add to ``actions_blueprint``.
AREAS = (_routes_simulated, _routes_files, _routes_pages, _routes_git, _routes_checks,
         _routes_vault, _routes_backup)
