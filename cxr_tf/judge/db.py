"""The judgment database: raters, items and judgments through SQLAlchemy 2.x.

Works on a SQLite file (the embedded default) and on PostgreSQL
(``postgresql+psycopg://user@host/dbname``). The schema's constraints, not only the
Python code, keep the data sound:

* ``raters``: ``name`` unique; ``token_hash`` (SHA-256 of the login token) unique. The
  token itself is never stored: it is 32 random bytes, so a fast hash is enough (a slow
  password hash only matters for guessable secrets).
* ``items``: ``(kind, subset, name)`` unique; ``kind`` in ('2afc', 'jnd').
* ``judgments``: ``(rater_id, item_id)`` unique, so a rater's judgment of an item exists
  at most once whatever the concurrency; ``answer`` in ('p0', 'p1', 'same', 'different');
  ``revisions >= 0``; ``response_ms >= 0``; foreign keys to raters and items.

Change rule (enforced here by a single conditional UPDATE): a rater's answers are final,
except the rater's *latest* judgment, which they may change with an explicit
``revise=True`` (the "change my last answer" button). Re-sending the same answer is
idempotent. Anything else is refused with :class:`AnswerConflict`.
"""
from __future__ import annotations

import datetime as _dt
import hashlib
import secrets
from dataclasses import dataclass

from cxr_tf.errors import CXRConfigError, CXRError

try:
    import sqlalchemy as sa
    from sqlalchemy import orm
except ImportError:  # optional extra
    sa = orm = None

ANSWERS = {"2afc": ("p0", "p1"), "jnd": ("same", "different")}
_INSTALL_HINT = "the rater app needs SQLAlchemy: pip install 'cxr_tf[judge]'"


def _require_sqlalchemy():
    if sa is None:
        raise CXRConfigError(_INSTALL_HINT)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


class JudgeDBError(CXRError):
    """A rater-app database operation was refused (unknown rater, bad answer, conflict)."""


class AnswerConflict(JudgeDBError):
    """The rater already gave a different answer to this item and may not change it."""


if sa is not None:

    class Base(orm.DeclarativeBase):
        pass

    class Rater(Base):
        __tablename__ = "raters"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        name: orm.Mapped[str] = orm.mapped_column(sa.String(100), unique=True)
        token_hash: orm.Mapped[str] = orm.mapped_column(sa.String(64), unique=True)
        order_seed: orm.Mapped[int] = orm.mapped_column(sa.BigInteger)
        active: orm.Mapped[bool] = orm.mapped_column(default=True)
        created_at: orm.Mapped[_dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True), default=_now)
        __table_args__ = (sa.CheckConstraint("length(name) > 0", name="ck_rater_name_nonempty"),)

    class Item(Base):
        __tablename__ = "items"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        kind: orm.Mapped[str] = orm.mapped_column(sa.String(8))
        subset: orm.Mapped[str] = orm.mapped_column(sa.String(100))
        name: orm.Mapped[str] = orm.mapped_column(sa.String(100))
        __table_args__ = (
            sa.UniqueConstraint("kind", "subset", "name", name="uq_item_key"),
            sa.CheckConstraint("kind IN ('2afc', 'jnd')", name="ck_item_kind"),
        )

    class Judgment(Base):
        __tablename__ = "judgments"
        id: orm.Mapped[int] = orm.mapped_column(primary_key=True)
        rater_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("raters.id", ondelete="RESTRICT"), index=True)
        item_id: orm.Mapped[int] = orm.mapped_column(sa.ForeignKey("items.id", ondelete="RESTRICT"))
        answer: orm.Mapped[str] = orm.mapped_column(sa.String(10))
        #: 2AFC: p1 was shown on the left (sides are randomised per rater and item)
        shown_swapped: orm.Mapped[bool] = orm.mapped_column(default=False)
        response_ms: orm.Mapped[int | None] = orm.mapped_column(sa.Integer, nullable=True)
        revisions: orm.Mapped[int] = orm.mapped_column(sa.Integer, default=0)
        created_at: orm.Mapped[_dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True), default=_now)
        updated_at: orm.Mapped[_dt.datetime] = orm.mapped_column(sa.DateTime(timezone=True), default=_now)
        __table_args__ = (
            sa.UniqueConstraint("rater_id", "item_id", name="uq_judgment_rater_item"),
            sa.CheckConstraint("answer IN ('p0', 'p1', 'same', 'different')", name="ck_judgment_answer"),
            sa.CheckConstraint("revisions >= 0", name="ck_judgment_revisions"),
            sa.CheckConstraint("response_ms IS NULL OR response_ms >= 0", name="ck_judgment_response_ms"),
        )


@dataclass(frozen=True)
class RaterInfo:
    id: int
    name: str
    order_seed: int
    token_hash: str
    active: bool


@dataclass(frozen=True)
class Outcome:
    """Result of :meth:`JudgmentStore.record`: ``status`` is created, unchanged or revised."""

    status: str
    answer: str


def normalise_url(db: str) -> str:
    """A SQLAlchemy URL; a plain path means a SQLite file."""
    if "://" in db:
        return db
    return "sqlite:///" + str(db)


def make_engine(db: str):
    """An engine for ``db`` with the settings concurrency needs.

    SQLite: WAL journal (readers never block the writer), a 30 s busy timeout (concurrent
    writers queue instead of failing) and foreign keys on (SQLite has them off by default).
    """
    _require_sqlalchemy()
    url = normalise_url(db)
    try:
        if url.startswith("sqlite"):
            engine = sa.create_engine(url, connect_args={"timeout": 30})

            @sa.event.listens_for(engine, "connect")
            def _sqlite_pragmas(dbapi_conn, _record):
                cur = dbapi_conn.cursor()
                cur.execute("PRAGMA journal_mode=WAL")
                cur.execute("PRAGMA foreign_keys=ON")
                cur.execute("PRAGMA busy_timeout=30000")
                cur.close()

            return engine
        return sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=10)
    except ModuleNotFoundError as e:
        raise CXRConfigError(f"database URL {url!r} needs the driver {e.name!r}: pip install 'cxr_tf[judge]'") from e
    except sa.exc.ArgumentError as e:
        raise CXRConfigError(f"invalid database URL {url!r}: {e}") from e


class JudgmentStore:
    """Raters, items and judgments in one database.

    Args:
        db: a SQLAlchemy URL (``sqlite:///x.sqlite``, ``postgresql+psycopg://...``) or a
            plain path to a SQLite file. Tables are created when missing.
    """

    def __init__(self, db: str):
        self.engine = make_engine(db)
        try:
            Base.metadata.create_all(self.engine)
        except sa.exc.OperationalError as e:
            raise CXRConfigError(f"cannot open the judgment database {normalise_url(db)!r}: {e.orig}") from e
        self.Session = orm.sessionmaker(self.engine, expire_on_commit=False)

    def close(self) -> None:
        self.engine.dispose()

    # --- raters -------------------------------------------------------------------------
    def add_rater(self, name: str, order_seed: int | None = None) -> str:
        """Create a rater; returns their login token (shown once, only its hash is stored)."""
        name = name.strip()
        if not name or len(name) > 100:
            raise JudgeDBError("a rater name must be 1-100 characters")
        token = secrets.token_urlsafe(32)
        seed = secrets.randbits(31) if order_seed is None else int(order_seed)
        with self.Session() as s:
            s.add(Rater(name=name, token_hash=hash_token(token), order_seed=seed, active=True))
            try:
                s.commit()
            except sa.exc.IntegrityError as e:
                raise JudgeDBError(f"rater {name!r} already exists (use rotate-token for a new token)") from e
        return token

    def rotate_token(self, name: str) -> str:
        """Give rater ``name`` a new token; the old one (and its sessions) stop working."""
        token = secrets.token_urlsafe(32)
        with self.Session.begin() as s:
            n = s.execute(sa.update(Rater).where(Rater.name == name).values(token_hash=hash_token(token))).rowcount
        if n != 1:
            raise JudgeDBError(f"no rater named {name!r}")
        return token

    def set_active(self, name: str, active: bool) -> None:
        with self.Session.begin() as s:
            n = s.execute(sa.update(Rater).where(Rater.name == name).values(active=active)).rowcount
        if n != 1:
            raise JudgeDBError(f"no rater named {name!r}")

    def rater_for_token(self, token: str) -> RaterInfo | None:
        """The active rater whose token this is, else ``None``."""
        if not token or len(token) > 200:
            return None
        with self.Session() as s:
            r = s.scalar(sa.select(Rater).where(Rater.token_hash == hash_token(token), Rater.active.is_(True)))
            return None if r is None else RaterInfo(r.id, r.name, r.order_seed, r.token_hash, r.active)

    def rater(self, rater_id: int) -> RaterInfo | None:
        with self.Session() as s:
            r = s.get(Rater, rater_id)
            return None if r is None else RaterInfo(r.id, r.name, r.order_seed, r.token_hash, r.active)

    def raters(self) -> list[RaterInfo]:
        with self.Session() as s:
            return [RaterInfo(r.id, r.name, r.order_seed, r.token_hash, r.active)
                    for r in s.scalars(sa.select(Rater).order_by(Rater.id))]

    # --- items --------------------------------------------------------------------------
    def sync_items(self, items) -> dict[str, int]:
        """Insert the test set's items that are not in the database; returns key -> item id."""
        with self.Session() as s:
            have = {(i.kind, i.subset, i.name): i.id for i in s.scalars(sa.select(Item))}
            new = [Item(kind=it.kind, subset=it.subset, name=it.id) for it in items
                   if (it.kind, it.subset, it.id) not in have]
            if new:
                s.add_all(new)
                try:
                    s.commit()
                except sa.exc.IntegrityError:  # another process synced the same items
                    s.rollback()
                have = {(i.kind, i.subset, i.name): i.id for i in s.scalars(sa.select(Item))}
        return {f"{it.kind}/{it.subset}/{it.id}": have[(it.kind, it.subset, it.id)] for it in items}

    # --- judgments ----------------------------------------------------------------------
    def answered_item_ids(self, rater_id: int) -> set[int]:
        with self.Session() as s:
            return set(s.scalars(sa.select(Judgment.item_id).where(Judgment.rater_id == rater_id)))

    def answers(self, rater_id: int) -> dict[int, str]:
        """This rater's answers, item id -> answer (only their own)."""
        with self.Session() as s:
            rows = s.execute(sa.select(Judgment.item_id, Judgment.answer).where(Judgment.rater_id == rater_id))
            return {i: a for i, a in rows}

    def latest(self, rater_id: int) -> tuple[int, str] | None:
        """(item id, answer) of the rater's most recent judgment."""
        with self.Session() as s:
            row = s.execute(sa.select(Judgment.item_id, Judgment.answer).where(Judgment.rater_id == rater_id)
                            .order_by(Judgment.id.desc()).limit(1)).first()
            return None if row is None else (row[0], row[1])

    def record(self, rater_id: int, item_id: int, kind: str, answer: str, *, revise: bool = False,
               shown_swapped: bool = False, response_ms: int | None = None) -> Outcome:
        """Store one judgment under the change rule of this module.

        Raises:
            JudgeDBError: the answer does not fit the item's kind.
            AnswerConflict: a different answer exists and may not be changed.
        """
        if answer not in ANSWERS.get(kind, ()):
            raise JudgeDBError(f"answer {answer!r} is not valid for a {kind} item; use one of {ANSWERS.get(kind)}")
        # Insert first: the unique constraint decides between concurrent first answers, and
        # on SQLite a transaction that starts with a write never hits a stale read snapshot.
        with self.Session() as s:
            s.add(Judgment(rater_id=rater_id, item_id=item_id, answer=answer, shown_swapped=shown_swapped,
                           response_ms=response_ms, revisions=0))
            try:
                s.commit()
                return Outcome("created", answer)
            except sa.exc.IntegrityError:
                s.rollback()
        with self.Session() as s:
            existing = s.scalar(sa.select(Judgment.answer).where(Judgment.rater_id == rater_id,
                                                                 Judgment.item_id == item_id))
        if existing is None:  # the IntegrityError was not the duplicate: e.g. unknown item or rater
            raise JudgeDBError(f"judgment refused by the database (rater {rater_id}, item {item_id})")
        if existing == answer:
            return Outcome("unchanged", answer)
        if not revise:
            raise AnswerConflict("item already answered differently; only your latest answer can be changed, "
                                 "with revise")
        latest = sa.select(sa.func.max(Judgment.id)).where(Judgment.rater_id == rater_id).scalar_subquery()
        with self.Session.begin() as s:
            # one statement: changes the row only while it is still this rater's latest judgment
            n = s.execute(sa.update(Judgment)
                          .where(Judgment.rater_id == rater_id, Judgment.item_id == item_id, Judgment.id == latest)
                          .values(answer=answer, revisions=Judgment.revisions + 1, updated_at=_now(),
                                  response_ms=response_ms)
                          .execution_options(synchronize_session=False)).rowcount
        if n != 1:
            raise AnswerConflict("only your latest answer can be changed; this one is final")
        return Outcome("revised", answer)

    def counts(self) -> dict[int, int]:
        """rater id -> number of judgments."""
        with self.Session() as s:
            return dict(s.execute(sa.select(Judgment.rater_id, sa.func.count()).group_by(Judgment.rater_id)).all())

    def all_judgments(self) -> list[dict]:
        """Every judgment with rater name and item key (no tokens), oldest first."""
        q = (sa.select(Judgment.id, Rater.name, Item.kind, Item.subset, Item.name, Judgment.answer,
                       Judgment.shown_swapped, Judgment.response_ms, Judgment.revisions, Judgment.created_at,
                       Judgment.updated_at)
             .join(Rater, Rater.id == Judgment.rater_id).join(Item, Item.id == Judgment.item_id)
             .order_by(Judgment.id))
        cols = ("judgment_id", "rater", "kind", "subset", "id", "answer", "shown_swapped", "response_ms",
                "revisions", "created_at", "updated_at")
        with self.Session() as s:
            return [dict(zip(cols, row)) for row in s.execute(q)]
