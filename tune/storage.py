"""Where a study lives: Optuna's RDB storage, an SQLite file in the project by default, or a
PostgreSQL database shared by many machines, and the locks that keep its workers in step.

Two Optuna workers that open a fresh PostgreSQL database at the same moment both create its tables
and types, and one of them dies (`duplicate key value violates unique constraint
"pg_type_typname_nsp_index"` on `CREATE TYPE studydirection`, seen here with Optuna 5): the schema
is created under a PostgreSQL advisory lock, one worker at a time, and retried should anything else
be creating it at the same moment. A trial is claimed under a lock per study (an advisory lock on
PostgreSQL, a lock file beside the SQLite file), so that workers never run more trials than asked.
"""
import contextlib
import hashlib
import os
import threading
import time
from pathlib import Path

from tune.errors import TuneError

DEFAULT_DB = "results/tune/studies.db"
HEARTBEAT_S = 10   # a running trial's worker records that it is alive this often
GRACE_S = 60       # a running trial without a heartbeat for this long is failed, and its params rerun


def storage_url(url, project):
    """The SQLAlchemy URL of --storage (None: the project's SQLite file, its folder created)."""
    if url is None:
        path = Path(project) / DEFAULT_DB
        path.parent.mkdir(parents=True, exist_ok=True)
        return f"sqlite:///{path.resolve()}"
    scheme = url.split("://", 1)[0] if "://" in url else ""
    if scheme not in ("sqlite", "postgresql", "postgresql+psycopg", "postgres"):
        raise TuneError(f"--storage {url}: expected sqlite:///PATH or postgresql://USER:PASSWORD@HOST:PORT/DATABASE")
    if scheme == "postgres":  # libpq's spelling; SQLAlchemy knows only postgresql://
        url = "postgresql" + url[len("postgres"):]
    return url


def shown(url):
    """The URL without its password, for messages and reports."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def is_postgres(url):
    return url.startswith("postgresql")


def advisory_key(name):
    """A signed 64-bit key for pg_advisory_lock, the same on every machine."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big", signed=True)


class Locks:
    """Named locks shared by every worker of a storage: PostgreSQL advisory locks (one connection
    per hold, closed after it, so a dead worker's lock goes with its connection), or, for SQLite,
    lock files beside the database (every worker of an SQLite study is on its machine)."""

    def __init__(self, url):
        self.url = url
        self._threads = threading.Lock()
        self._engine = None
        if is_postgres(url):
            import sqlalchemy
            from sqlalchemy.pool import NullPool

            self._engine = sqlalchemy.create_engine(url, poolclass=NullPool)

    @contextlib.contextmanager
    def hold(self, name):
        if self._engine is not None:
            import sqlalchemy

            key = advisory_key(name)
            with self._engine.connect() as connection:
                connection.execute(sqlalchemy.text("SELECT pg_advisory_lock(:key)"), {"key": key})
                connection.commit()
                try:
                    yield
                finally:
                    connection.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                    connection.commit()
            return
        database = Path(self.url.split("///", 1)[1])
        safe = hashlib.sha1(name.encode()).hexdigest()[:16]
        with self._threads, removed_lock_file(database.with_name(f"{database.name}.{safe}.lock")):
            yield


@contextlib.contextmanager
def removed_lock_file(path):
    """An exclusive flock on `path`, a file that exists only while it is held: the holder removes it
    before it lets go, and a waiter that then gets the lock of a file no longer at `path` tries again
    on the new one, so no empty lock file is left beside the database."""
    import fcntl

    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            held = os.fstat(fd)
            try:
                current = os.stat(path)
                if (current.st_dev, current.st_ino) == (held.st_dev, held.st_ino):
                    break
            except FileNotFoundError:
                pass
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        try:
            os.unlink(path)
        finally:
            os.close(fd)


def open_storage(url, stale_trial_callback, attempts=5):
    """Optuna's RDBStorage at `url`, with heartbeats (HEARTBEAT_S, GRACE_S) and the callback that
    reruns a stale trial's params; returns (storage, locks). Creating the schema takes the storage's
    "schema" lock, and is retried on a clash with a creator that does not take it."""
    import optuna
    import sqlalchemy.exc

    locks = Locks(url)
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(attempts):
        try:
            with locks.hold("optuna-schema"):
                storage = optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_S, grace_period=GRACE_S,
                    heartbeat_stale_trial_callback=stale_trial_callback)
            return storage, locks
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as err:
            if attempt == attempts - 1:
                raise TuneError(f"--storage {shown(url)}: could not create Optuna's tables: "
                                f"{str(err).splitlines()[0]}") from None
            time.sleep(0.5 * (attempt + 1))
        except sqlalchemy.exc.OperationalError as err:
            raise TuneError(f"--storage {shown(url)}: cannot open the database: {str(err.orig).strip().splitlines()[0]}") from None
        except ImportError as err:
            raise TuneError(f"--storage {shown(url)}: {err}; pip install -r requirements.txt") from None
