"""Optuna storages for the search: a journal file (one machine, many processes) by default, or an
RDB URL (PostgreSQL, MySQL, SQLite) with heartbeats for many machines."""

from __future__ import annotations

import math
import os
import re
import time
import warnings
from pathlib import Path
from typing import Any

from l2bg.base import errors
from l2bg.base.errors import L2BGError, ParamError
from l2bg.search.heartbeat import retry_callback

__all__ = ["one_line", "open_storage", "redact_url"]

_RDB = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")

#: Per database, SQLAlchemy's driver name -> (the module it imports, the package that has it).
_DRIVERS = {
    "postgresql": {"psycopg": ("psycopg", "'psycopg[binary]'"),
                   "psycopg2": ("psycopg2", "psycopg2-binary"), "pg8000": ("pg8000", "pg8000")},
    "mysql": {"mysqldb": ("MySQLdb", "mysqlclient"), "pymysql": ("pymysql", "PyMySQL"),
              "mysqlconnector": ("mysql.connector", "mysql-connector-python")},
}
_DRIVERS["mariadb"] = _DRIVERS["mysql"]


def redact_url(url: str) -> str:
    """The URL with its password replaced by ``***``."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def one_line(exc: BaseException) -> str:
    """An exception's message on one line, without SQLAlchemy's background link."""
    text = re.sub(r"\(Background on this error at: [^)]*\)", "", errors.one_line(exc, None))
    return text.strip()[:240]


def open_storage(url: str, *, lease_s: float = 60.0, max_retry: int = 3) -> Any:
    """An Optuna storage for ``url``: ``journal:FILE`` (JournalStorage + JournalFileBackend),
    ``sqlite:///FILE``, ``postgresql://…`` or ``mysql://…`` (RDBStorage with heartbeats every
    lease/6 s, a grace period of ``lease_s`` and stale-trial retry)."""
    if not isinstance(url, str) or not url.strip():
        raise ParamError("{storage} is empty; give postgresql://…, mysql://…, sqlite:///FILE "
                         "or journal:FILE", "storage")
    if url.startswith("journal:"):
        return _open_journal(url, lease_s)
    return _open_rdb(url, lease_s, max_retry)


def _open_journal(url: str, lease_s: float) -> Any:
    from l2bg.search.journal import open_journal

    shown = redact_url(url)
    path = Path(url[len("journal:"):]).expanduser()
    if not path.parent.is_dir():
        raise L2BGError(f"journal storage {shown}: directory {path.parent} does not exist; "
                        "create it or point journal: elsewhere")
    if path.is_dir():
        raise L2BGError(f"journal storage {shown} is a directory; point journal: at a file")
    try:
        return open_journal(path, lease_s)
    except L2BGError:
        raise
    except Exception as exc:  # noqa: BLE001 - reported on one line
        raise L2BGError(f"cannot open journal storage {shown}: {one_line(exc)}") from exc


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # its parent package is missing
        return False


def _driver_hint(url: str, base: str) -> str:
    """What to do about the missing driver of ``url``: the package to install, and a URL form
    whose driver is installed, if one is."""
    from sqlalchemy.engine import make_url

    try:  # the driver SQLAlchemy picks for the URL (its default one for a bare scheme)
        driver = make_url(url).get_dialect().driver
    except Exception:  # noqa: BLE001 - an unknown driver: named as written
        driver = url.split("://", 1)[0].partition("+")[2] or None
    known = _DRIVERS.get(base, {})
    module, package = known.get(driver or "", (driver, None))
    hint = f"its database driver{f' {module}' if module else ''} is not installed; "
    hint += (f"pip install {package}" if package
             else "install the database driver SQLAlchemy needs for it")
    other = [d for d, (m, _) in known.items() if d != driver and _importable(m)]
    if other:
        hint += f", or use {base}+{other[0]}://… ({known[other[0]][0]} is installed)"
    return hint


def _open_rdb(url: str, lease_s: float, max_retry: int) -> Any:
    import optuna

    shown = redact_url(url)
    scheme = url.split("://", 1)[0] if "://" in url else ""
    base = scheme.split("+", 1)[0]
    if base not in _RDB:
        raise L2BGError(f"unsupported storage URL {shown!r}: use postgresql://USER:PASS@HOST/DB, "
                        "mysql://USER:PASS@HOST/DB, sqlite:///FILE.db or journal:FILE")
    if base == "sqlite" and url.split("://", 1)[1] in ("", "/", "/:memory:"):
        raise L2BGError(f"storage URL {shown!r} is an in-memory SQLite database, which no "
                        "other worker or later run can see; use sqlite:///FILE.db")
    if base == "postgres":
        raise L2BGError(f"storage URL {shown!r}: SQLAlchemy needs the scheme postgresql://, "
                        "not postgres://")
    interval = max(1, int(lease_s // 6))
    grace = max(2 * interval, int(math.ceil(lease_s)))
    kwargs: dict[str, Any] = {} if base == "sqlite" else {"pool_pre_ping": True}
    try:
        for attempt in range(5):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=kwargs, heartbeat_interval=interval,
                        grace_period=grace, heartbeat_stale_trial_callback=retry_callback(
                            max_retry))
            except ImportError:
                raise
            except Exception as exc:  # noqa: BLE001
                # workers starting together race to create Optuna's tables; a retry sees them
                race = any(w in str(exc).lower() for w in ("already exists", "duplicate",
                                                           "uniqueviolation", "integrity"))
                if attempt == 4 or not race:
                    raise
                time.sleep(0.3 * (attempt + 1) + 0.2 * (os.getpid() % 5))
        raise AssertionError("unreachable")
    except ImportError as exc:
        raise L2BGError(f"cannot open storage {shown}: {_driver_hint(url, base)}") from exc
    except Exception as exc:  # noqa: BLE001 - any driver/connection error, one line
        raise L2BGError(f"cannot open storage {shown}: {one_line(exc)}; check the URL and that "
                        "the database server is up") from exc
